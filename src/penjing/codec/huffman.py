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
    """Huffman code length of every symbol (0 for symbols that never occur), at most ``max_len``.

    Plain Huffman when its tree is shallow enough; otherwise the optimal length-limited code
    by package-merge (Larmore & Hirschberg 1990), which gives every occurring symbol a code
    (unlike heuristics that flatten the counts) and meets the Kraft sum exactly."""
    counts = np.asarray(counts, dtype=np.int64)
    lengths = _lengths_unlimited(counts)
    if lengths.max(initial=0) <= max_len:
        return lengths
    return _package_merge(counts, max_len)


def _package_merge(counts: np.ndarray, max_len: int) -> np.ndarray:
    """Optimal code lengths of at most ``max_len`` bits for the symbols with ``counts > 0``.

    The coin collector's view: every symbol is a coin of each denomination 2^-1 .. 2^-max_len;
    the cheapest set of coins worth n - 1 gives the lengths (a symbol's length is how many of
    its coins were taken). Level by level from the smallest denomination, adjacent items are
    paired into packages and merged with the leaves; the items taken at each level are always
    a *prefix* of its sorted list, and within it the leaves taken are the lightest ones, so
    counting leaves per level is enough -- no package needs to remember its contents."""
    symbols = np.flatnonzero(counts)
    n = len(symbols)
    if n > 1 << max_len:
        raise ValueError(f"{n} symbols cannot have codes of at most {max_len} bits")
    order = symbols[np.argsort(counts[symbols], kind="stable")]
    leaves = counts[order]
    is_leaf_by_level = []
    items = leaves.copy()  # the list of the deepest level: the leaves alone
    is_leaf_by_level.append(np.ones(n, dtype=bool))
    for _ in range(max_len - 1):
        packages = items[0:len(items) - 1:2] + items[1::2]
        merged = np.concatenate([leaves, packages])
        rank = np.argsort(merged, kind="stable")  # ties: leaves first (they come first)
        items = merged[rank]
        is_leaf_by_level.append(rank < n)
    lengths_sorted = np.zeros(n, dtype=np.int64)
    take = 2 * n - 2  # items taken from the shallowest level's list
    for is_leaf in reversed(is_leaf_by_level):
        leaves_taken = int(is_leaf[:take].sum())
        lengths_sorted[:leaves_taken] += 1
        take = 2 * (take - leaves_taken)
    lengths = np.zeros(len(counts), dtype=np.int64)
    lengths[order] = lengths_sorted
    return lengths


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
    used = np.asarray(lengths)[np.asarray(lengths) > 0].astype(np.int64)
    return (bool(used.size) and int(used.max()) <= MAX_LEN
            and int((1 << (MAX_LEN - used)).sum()) <= 1 << MAX_LEN)


#: Most symbols in one independently decodable block. The decoder's work per stream grows with
#: the block length (one vector step per symbol position), so a hostile file cannot make one
#: small stream cost more than ``MAX_BLOCK`` steps.
MAX_BLOCK = 1 << 14


def block_size(n: int) -> int:
    """Symbols per independently decodable block.

    Streams of up to 4096 symbols are one block (no offsets to store: small files stay
    small); longer ones get blocks of at least 256 symbols, at most ~8192 blocks, so decoding
    takes few, wide vector steps for about two bytes of offset per block (< 1%)."""
    if n <= 4096:
        return max(1, n)
    return min(MAX_BLOCK, max(256, math.ceil(n / 8192)))


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


# ---------------------------------------------------------------------------- decoder

def decode_table(lengths: np.ndarray) -> tuple[np.ndarray, int]:
    """``(table, width)``: entry ``v`` of the ``2^width`` table, for the ``width``-bit window
    ``v``, is ``symbol << 4 | code length`` of the code that starts it (0: no code does).
    Symbols are below 2^12 and lengths at most 15, so an entry is one uint16."""
    width = int(lengths.max())
    codes = canonical_codes(lengths)
    table = np.zeros(1 << width, dtype=np.uint16)
    used = np.flatnonzero(lengths)
    # Canonical codes of one length are consecutive, so each symbol owns one contiguous range
    # of windows: fill them with a repeat instead of a loop over symbols.
    span = np.left_shift(1, width - lengths[used]).astype(np.int64)
    lo = codes[used].astype(np.int64) * span
    order = np.argsort(lo)
    entries = (used[order] << 4 | lengths[used][order]).astype(np.uint16)
    filled = np.repeat(entries, span[order])
    start = int(lo[order][0])
    table[start:start + len(filled)] = filled
    return table, width


def _windows(data: bytes | memoryview, pad: int) -> np.ndarray:
    """The big-endian 32-bit word starting at every byte (zero past the end, ``pad`` extra)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    padded = np.zeros(len(raw) + pad + 4, dtype=np.uint8)
    padded[:len(raw)] = raw
    words = np.ndarray(shape=(len(raw) + pad,), dtype=">u4", buffer=padded.data, strides=(1,))
    return words.astype(np.uint32)


def decode(data: bytes | memoryview, n: int, lengths: np.ndarray, block: int,
           offsets: np.ndarray, total_bits: int, base: int = 0) -> np.ndarray:
    """Inverse of :func:`encode` (int32 symbols); every block must decode to exactly its
    symbols and end where the next one starts. ``base``: file offset of ``data`` (errors)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    if not kraft_ok(lengths):
        raise CorruptFileError("Huffman code lengths are not a prefix code", base)
    if not 1 <= block <= MAX_BLOCK:
        raise CorruptFileError(f"Huffman block of {block} symbols not in [1, {MAX_BLOCK}]", base)
    offsets = np.asarray(offsets, dtype=np.int64)
    n_blocks = len(offsets)
    last = n - block * (n_blocks - 1)  # symbols in the last block
    if n_blocks != -(-n // block) or not 1 <= last <= block:
        raise CorruptFileError(f"{n_blocks} Huffman blocks of {block} do not hold {n} symbols", base)
    ends = np.append(offsets[1:], total_bits)
    # Every symbol takes 1..15 bits, so each block's bit length is bounded by its symbol count
    # (this also keeps every read inside the data and the padding after it).
    counts = np.full(n_blocks, block, dtype=np.int64)
    counts[-1] = last
    spans = ends - offsets
    if offsets[0] != 0 or not ((spans >= counts) & (spans <= MAX_LEN * counts)).all():
        bad = int(np.flatnonzero((spans < counts) | (spans > MAX_LEN * counts))[0]) if offsets[0] == 0 else 0
        raise CorruptFileError(f"Huffman block {bad} spans {int(spans[bad])} bits for {int(counts[bad])} "
                               f"symbols (each takes 1..{MAX_LEN})", base)
    table, width = decode_table(lengths)
    # Pick the cheaper of two vectorisations (both bounded by the data: see the docstrings).
    step_cost = block * (12e-6 + 10e-9 * n_blocks)
    jump_cost = total_bits * (12 + 3 * max(1, block - 1).bit_length()) * 1e-9 + 2e-4
    decoder = _decode_jumps if jump_cost < step_cost else _decode_steps
    return decoder(data, table, width, block, last, offsets, ends, total_bits, base)


def _symbols(entries: np.ndarray, last: int) -> np.ndarray:
    """int32 symbols of a ``(blocks, block)`` array of table entries, the last block cut to
    ``last`` (one pass: the shift, the cast and the transpose of a step-major array at once)."""
    n_blocks, block = entries.shape
    out = np.empty((n_blocks - 1) * block + last, dtype=np.int32)
    np.right_shift(entries[:-1], 4, out=out[:(n_blocks - 1) * block].reshape(n_blocks - 1, block),
                   casting="unsafe")
    np.right_shift(entries[-1, :last], 4, out=out[(n_blocks - 1) * block:], casting="unsafe")
    return out


def _check(entries: np.ndarray, last: int, base: int, offsets: np.ndarray) -> None:
    """Every symbol of every block (the last block's first ``last``) is a code: a valid
    entry has a length >= 1, so it is nonzero, and the no-code entry is 0."""
    if (entries[:-1].min(initial=1) > 0) and entries[-1, :last].min() > 0:
        return
    bad = np.flatnonzero((entries[:-1] == 0).any(axis=1)).tolist() or [len(entries) - 1]
    raise CorruptFileError(f"Huffman block {bad[0]} holds a bit pattern that is no code",
                           base + int(offsets[bad[0]]) // 8)


def _check_ends(got: np.ndarray, ends: np.ndarray, base: int, offsets: np.ndarray) -> None:
    if not np.array_equal(got, ends):
        bad = int(np.flatnonzero(got != ends)[0])
        raise CorruptFileError(f"Huffman block {bad} ends at bit {int(got[bad])}, not at the stored "
                               f"{int(ends[bad])}", base + int(offsets[bad]) // 8)


def _decode_steps(data, table, width, block, last, offsets, ends, total_bits, base) -> np.ndarray:
    """All blocks advance together, one vector step per symbol position: ``block`` steps of
    vectors as long as the number of blocks (for streams of many blocks)."""
    n_blocks = len(offsets)
    # A block that does not decode may run on past its end (at most 15 bits per step).
    windows = _windows(data, pad=(15 * block) // 8 + 8)
    index = np.uint32 if total_bits + 15 * block + 64 < 1 << 32 else np.uint64
    pos = offsets.astype(index)
    shift = index(32 - width)
    out = np.empty((block, n_blocks), dtype=np.uint16)
    q = np.empty(n_blocks, dtype=index)
    w = np.empty(n_blocks, dtype=np.uint32)
    step_bits = np.empty(n_blocks, dtype=np.uint16)
    end_of_last = None
    for step in range(block):  # every buffer preallocated: no allocation per step
        if step == last:
            end_of_last = int(pos[-1])
        np.right_shift(pos, 3, out=q)
        np.take(windows, q, out=w, mode="clip")  # clip: no bounds-check buffer (reads stay in the padding)
        np.bitwise_and(pos, 7, out=q)
        np.left_shift(w, q, out=w, casting="unsafe")
        np.right_shift(w, shift, out=w, casting="unsafe")
        e = np.take(table, w, out=out[step], mode="clip")
        np.bitwise_and(e, 15, out=step_bits)
        np.add(pos, step_bits, out=pos, casting="unsafe")
    if end_of_last is None:
        end_of_last = int(pos[-1])
    # valid entries are nonzero (length >= 1): check the step-major array row by row
    if out[:last].min() == 0 or (last < block and out[last:, :-1].min() == 0):
        _check(out.T, last, base, offsets)  # finds and names the bad block
    entries = out.T
    got = pos.astype(np.int64)
    got[-1] = end_of_last
    _check_ends(got, ends, base, offsets)
    return _symbols(entries, last)


def _decode_jumps(data, table, width, block, last, offsets, ends, total_bits, base) -> np.ndarray:
    """For streams of few blocks: the code starting at *every* bit position at once, then the
    chain of code starts by pointer doubling (``next^(2^k)``), ``log2(block)`` gathers over
    the bits instead of ``block`` sequential steps."""
    windows = _windows(data, pad=8)
    bit = np.arange(total_bits, dtype=np.int64)
    w = windows[bit >> 3] << (bit & 7).astype(np.uint32) >> np.uint32(32 - width)
    entry = np.concatenate([table[w], np.zeros(2, dtype=np.uint16)])  # [total] = end, [total+1] = dead
    step = (entry[:total_bits] & 15).astype(np.int64)
    jump = np.minimum(bit + step, total_bits + 1)
    jump[step == 0] = total_bits + 1  # no code starts here: the chain dies
    jump = np.concatenate([jump, [total_bits + 1, total_bits + 1]])
    pos = offsets[:, None]
    while pos.shape[1] < block:  # pos[:, j + 2^k] = next^(2^k)(pos[:, j])
        pos = np.concatenate([pos, jump[pos]], axis=1)
        if pos.shape[1] < block:
            jump = jump[jump]
    pos = pos[:, :block]
    entries = entry[pos]
    _check(entries, last, base, offsets)
    got = pos[:, -1] + (entries[:, -1] & 15)
    got[-1] = pos[-1, last - 1] + (entries[-1, last - 1] & 15)
    _check_ends(got, ends, base, offsets)
    return _symbols(entries, last)
