"""Symbol streams: a sequence of small unsigned integers stored either packed at a fixed
width or canonical-Huffman coded, whichever is smaller.

Layout (all integers LEB128 varints unless noted)::

    count
    if count > 0:
      mode (u8): 0 = packed, 1 = Huffman
      packed:  width (u8), ceil(count * width / 8) bytes
      Huffman: alphabet, code lengths (4 bits each, ceil(alphabet / 2) bytes), block,
               bit length of every block but the last, total bits, ceil(total / 8) bytes
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from penjing.codec import huffman
from penjing.codec.bits import MAX_PACKED_WIDTH, Reader, pack, packed_size, unpack, varint
from penjing.codec.errors import CorruptFileError

PACKED, HUFFMAN = 0, 1
#: Larger alphabets are only ever packed (their code-length table would cost too much).
MAX_HUFFMAN_ALPHABET = 1 << 12


@dataclass
class StreamParts:
    """Bytes of a stream split into its coded data and its overhead (counts, tables)."""

    data: int = 0
    table: int = 0


def _huffman_overhead(alphabet: int, n: int, block: int, total_bits: int) -> int:
    blocks = -(-n // block)
    return (len(varint(alphabet)) + (alphabet + 1) // 2 + len(varint(block))
            + (blocks - 1) * len(varint(block * huffman.MAX_LEN)) + len(varint(total_bits)))


def estimate_nbytes(counts: np.ndarray, width: int, use_huffman: bool = True) -> int:
    """Bytes a stream with these symbol ``counts`` will take (exact for packed, within a few
    bytes for Huffman), without building the stream."""
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    packed = len(varint(n)) + (2 + packed_size(n, width) if n else 0)
    if not n or not use_huffman or width > 12:
        return packed
    alphabet = int(np.flatnonzero(counts)[-1]) + 1
    lengths = huffman.code_lengths(counts[:alphabet])
    total_bits = int((counts[:alphabet] * lengths).sum())
    size = (len(varint(n)) + 1 + _huffman_overhead(alphabet, n, huffman.block_size(n), total_bits)
            + (total_bits + 7) // 8)
    return min(packed, size)


class StreamPlan:
    """A stream ready to write; ``nbytes`` is known before encoding (to pick between codecs)."""

    def __init__(self, symbols: np.ndarray, width: int, use_huffman: bool = True):
        self.symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
        self.width = int(width)
        if not 1 <= self.width <= MAX_PACKED_WIDTH:
            raise ValueError(f"stream width {self.width} not in [1, {MAX_PACKED_WIDTH}]")
        n = len(self.symbols)
        if n and int(self.symbols.max()) >= 1 << self.width:
            raise ValueError(f"symbol {int(self.symbols.max())} does not fit in {self.width} bits")
        head = len(varint(n))
        self.mode = PACKED
        self.nbytes = head + (1 + 1 + packed_size(n, self.width) if n else 0)
        if n and use_huffman and self.width <= 12:
            alphabet = int(self.symbols.max()) + 1
            counts = np.bincount(self.symbols, minlength=alphabet)
            self.lengths = huffman.code_lengths(counts)
            total_bits = int((counts * self.lengths).sum())
            self.block = huffman.block_size(n)
            size = head + 1 + _huffman_overhead(alphabet, n, self.block, total_bits) + (total_bits + 7) // 8
            if size < self.nbytes:
                self.mode, self.nbytes = HUFFMAN, size

    def encode(self) -> tuple[bytes, StreamParts]:
        n = len(self.symbols)
        head = varint(n)
        if n == 0:
            return head, StreamParts(table=len(head))
        if self.mode == PACKED:
            data = pack(self.symbols, self.width)
            return head + bytes([PACKED, self.width]) + data, StreamParts(len(data), len(head) + 2)
        used = np.bincount(self.symbols, minlength=len(self.lengths)) > 0
        if not huffman.kraft_ok(self.lengths) or not (self.lengths[used] > 0).all():
            # A broken length limiter would write a stream no decoder can read: refuse here.
            raise RuntimeError("internal error: Huffman code lengths do not give every symbol a prefix code")
        data, offsets, total = huffman.encode(self.symbols, self.lengths, self.block)
        lengths = self.lengths.astype(np.uint8)
        if len(lengths) % 2:
            lengths = np.append(lengths, np.uint8(0))
        table = bytearray(head + bytes([HUFFMAN]) + varint(len(self.lengths)))
        table += ((lengths[0::2] << 4) | lengths[1::2]).astype(np.uint8).tobytes()
        table += varint(self.block)
        for size in np.diff(offsets):
            table += varint(int(size))
        table += varint(total)
        return bytes(table) + data, StreamParts(len(data), len(table))


def read_stream(reader: Reader, max_count: int, what: str = "stream") -> tuple[np.ndarray, StreamParts]:
    """Read one stream of at most ``max_count`` symbols; returns ``(symbols int64, parts)``.

    Every symbol costs at least one bit in either mode (packed widths are 1..32, Huffman codes
    1..15 bits), so the count a stream claims is checked against the bytes that remain before
    anything is allocated: a stream can never decode to more than 8 symbols per byte."""
    start = reader.pos
    n = reader.varint(f"{what} count", limit=1 << 62)
    if n > max_count:
        raise reader.error(f"{what} claims {n} symbols, more than the {max_count} possible", start)
    if n == 0:
        return np.zeros(0, dtype=np.int64), StreamParts(table=reader.pos - start)
    if n > 8 * reader.remaining:
        raise reader.error(f"{what} claims {n} symbols but only {reader.remaining} bytes remain "
                           "(every symbol takes at least one bit)", start)
    mode_at = reader.pos
    mode = reader.u8(f"{what} mode")
    if mode == PACKED:
        width_at = reader.pos
        width = reader.u8(f"{what} width")
        if not 1 <= width <= MAX_PACKED_WIDTH:
            raise reader.error(f"{what} width {width} not in [1, {MAX_PACKED_WIDTH}]", width_at)
        head = reader.pos - start
        data = reader.take(packed_size(n, width), f"{what} packed data")
        return unpack(data, n, width), StreamParts(len(data), head)
    if mode != HUFFMAN:
        raise reader.error(f"{what} has unknown mode {mode}", mode_at)
    alphabet = reader.varint(f"{what} alphabet", limit=MAX_HUFFMAN_ALPHABET)
    table_at = reader.pos
    packed = np.frombuffer(reader.take((alphabet + 1) // 2, f"{what} code lengths"), dtype=np.uint8)
    lengths = np.stack([packed >> 4, packed & 15], axis=1).reshape(-1)[:alphabet].astype(np.int64)
    if not huffman.kraft_ok(lengths):
        raise reader.error(f"{what} code lengths are not a prefix code", table_at)
    block_at = reader.pos
    block = reader.varint(f"{what} block size", limit=min(n, huffman.MAX_BLOCK))
    if block == 0:
        raise reader.error(f"{what} block size is 0", block_at)
    blocks = -(-n // block)
    if blocks - 1 > reader.remaining:  # every stored block size is at least one byte
        raise reader.error(f"{what} claims {blocks} blocks, past the end of the data", block_at)
    sizes_at = reader.pos
    sizes = reader.varints(blocks - 1, f"{what} block size", limit=block * huffman.MAX_LEN)
    total_at = reader.pos
    total = reader.varint(f"{what} bit count", limit=n * huffman.MAX_LEN)
    if total < n:  # every symbol takes at least one bit
        raise reader.error(f"{what} holds {n} symbols in only {total} bits", total_at)
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
    if offsets[-1] > total:
        raise reader.error(f"{what} block offsets run past its {total} bits", sizes_at)
    head = reader.pos - start
    data_at = reader.offset
    data = reader.take((total + 7) // 8, f"{what} Huffman data")
    try:
        symbols = huffman.decode(data, n, lengths, block, offsets, total, base=data_at)
    except CorruptFileError as exc:
        raise CorruptFileError(f"{reader.what}: {what}: {exc.detail}", exc.offset) from None
    return symbols, StreamParts(len(data), head)
