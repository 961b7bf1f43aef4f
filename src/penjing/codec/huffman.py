"""Canonical Huffman coding, vectorised with numpy.

* Code lengths come from the classic heap construction over the symbol counts, limited to
  :data:`MAX_LEN` bits (counts are halved until the tree fits) so the decoder's lookup table
  has at most ``2^15`` entries and the table is stored as 4 bits per symbol.
* Codes are *canonical* (assigned in order of (length, symbol)): the lengths alone describe
  the code, which is what makes the stored table compact.
* Encoding places all codes at once: each code's 32-bit window is split into 4 bytes that
  weighted ``np.bincount`` adds into place (codes never share a bit, so adding is OR-ing).
* Decoding is table-driven: a ``2^L`` table maps any ``L``-bit window to (symbol, length).
  The stream is cut into blocks of ``block`` symbols whose bit offsets are stored, and all
  blocks advance together, one numpy step per symbol position: ``block`` steps of vectors as
  long as the number of blocks, instead of one Python step per symbol.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from penjing.codec.errors import CorruptFileError

MAX_LEN = 15


def _lengths_unlimited(counts: np.ndarray) -> np.ndarray:
    symbols = np.flatnonzero(counts)
    lengths = np.zeros(len(counts), dtype=np.int64)
    if len(symbols) == 1:
        lengths[symbols[0]] = 1
        return lengths
    # heap of (weight, tiebreak, members); merging adds one bit to every member's code
    heap = [(int(counts[s]), i, [int(s)]) for i, s in enumerate(symbols)]
    heapq.heapify(heap)
    tiebreak = len(heap)
    while len(heap) > 1:
        w1, _, m1 = heapq.heappop(heap)
        w2, _, m2 = heapq.heappop(heap)
        for s in m1:
            lengths[s] += 1
        for s in m2:
            lengths[s] += 1
        # merge the shorter list into the longer one (keeps the whole build O(k log k))
        merged = m1 + m2 if len(m1) >= len(m2) else m2 + m1
        heapq.heappush(heap, (w1 + w2, tiebreak, merged))
        tiebreak += 1
    return lengths


def code_lengths(counts: np.ndarray, max_len: int = MAX_LEN) -> np.ndarray:
    """Huffman code length of every symbol (0 for symbols that never occur), at most ``max_len``."""
    counts = np.asarray(counts, dtype=np.int64)
    work = counts.copy()
    while True:
        lengths = _lengths_unlimited(work)
        if lengths.max(initial=0) <= max_len:
            return lengths
        # flatten the distribution (rare symbols gain weight) until the tree is shallow enough
        work = np.where(work > 0, np.maximum(work >> 1, 1), 0)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code of every symbol, given its code length (uint32)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.uint32)
    order = np.lexsort((np.arange(len(lengths)), lengths))
    code, prev = 0, 0
    for s in order:
        n = int(lengths[s])
        if n == 0:
            continue
        code <<= n - prev
        codes[s] = code
        code += 1
        prev = n
    return codes


def kraft_ok(lengths: np.ndarray) -> bool:
    """True when ``lengths`` describe a prefix code (Kraft sum <= 1) with at least one symbol."""
    used = lengths[lengths > 0].astype(np.int64)
    return bool(used.size) and int((1 << (MAX_LEN - used)).sum()) <= 1 << MAX_LEN


def block_size(n: int) -> int:
    """Symbols per independently decodable block.

    Streams of up to 8192 symbols are one block (no offsets to store: small files stay
    small); longer ones get blocks of at least 512 symbols, at most ~4096 blocks, so decoding
    takes few, wide vector steps for about two bytes of offset per block (< 0.5%)."""
    if n <= 8192:
        return max(1, n)
    return max(512, math.ceil(n / 4096))


def encode(symbols: np.ndarray, lengths: np.ndarray, block: int) -> tuple[bytes, np.ndarray, int]:
    """Huffman-code ``symbols``; returns ``(data, bit offset of every block, total bits)``."""
    symbols = np.asarray(symbols, dtype=np.int64)
    codes = canonical_codes(lengths)
    sym_len = np.asarray(lengths, dtype=np.int64)[symbols]
    sym_code = codes[symbols].astype(np.int64)
    ends = np.cumsum(sym_len)
    total = int(ends[-1]) if len(ends) else 0
    starts = ends - sym_len
    n_bytes = (total + 7) // 8
    # Each code, left-aligned in a 32-bit window at its first byte, touches 4 bytes at most.
    # Codes occupy disjoint bits, so summing the windows' bytes per position is the same as
    # OR-ing them: four weighted bincounts place every bit, no loop over symbols.
    window = sym_code << (32 - (starts & 7) - sym_len)
    first = starts >> 3
    acc = np.zeros(n_bytes + 3, dtype=np.float64)
    for k in range(4):
        part = (window >> (24 - 8 * k)) & 0xFF
        acc += np.bincount(first + k, weights=part, minlength=n_bytes + 3)
    return acc[:n_bytes].astype(np.uint8).tobytes(), starts[::block].copy(), total

def decode(data: bytes | memoryview, n: int, lengths: np.ndarray, block: int,
           offsets: np.ndarray, total_bits: int) -> np.ndarray:
    """Inverse of :func:`encode`; every block must end exactly where the next one starts."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if not kraft_ok(lengths):
        raise CorruptFileError("Huffman table is not a valid prefix code")
    width = int(lengths.max())
    codes = canonical_codes(lengths)
    table_sym = np.zeros(1 << width, dtype=np.int64)
    table_len = np.zeros(1 << width, dtype=np.int64)  # 0 marks a window no code starts
    for s in np.flatnonzero(lengths):
        shift = width - int(lengths[s])
        lo = int(codes[s]) << shift
        table_sym[lo:lo + (1 << shift)] = s
        table_len[lo:lo + (1 << shift)] = lengths[s]
    raw = np.frombuffer(data, dtype=np.uint8).astype(np.uint32)
    padded = np.concatenate([raw, np.zeros(3, dtype=np.uint32)])
    # 24-bit window starting at every byte: covers any 15-bit code at any bit offset
    window = (padded[:-2] << 16) | (padded[1:-1] << 8) | padded[2:]
    n_blocks = len(offsets)
    last = n - block * (n_blocks - 1)  # symbols in the last block
    out = np.empty((n_blocks, block), dtype=np.int64)
    pos = np.asarray(offsets, dtype=np.int64).copy()
    mask = (1 << width) - 1
    limit = len(window) - 1
    end_of_last = 0
    for step in range(block):
        if step == last:  # the last (shorter) block is done; the others go on
            end_of_last = int(pos[-1])
            pos = pos[:-1]
            if not len(pos):
                break
        p = np.minimum(pos >> 3, limit)
        v = (window[p] >> (24 - width - (pos & 7))) & mask
        ln = table_len[v]
        if not ln.all():
            raise CorruptFileError("Huffman stream holds a bit pattern that is no code")
        out[:len(pos), step] = table_sym[v]
        pos += ln
    ends = pos if last == block else np.append(pos, end_of_last)
    if not np.array_equal(ends, np.append(offsets[1:], total_bits)):
        raise CorruptFileError("Huffman blocks do not end where the stored offsets say")
    return out.reshape(-1)[:n]
