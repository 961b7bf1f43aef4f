"""Byte-level building blocks: LEB128 varints, a bounds-checked reader, fixed-width packing.

Every read goes through :class:`Reader`, which refuses to step past the end of its buffer, so
no length taken from a file is ever used before it is checked against the bytes that remain.
"""

from __future__ import annotations

import numpy as np

from penjing.codec.errors import CorruptFileError


def varint(n: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, high bit = more bytes follow."""
    if n < 0:
        raise ValueError(f"varint of a negative number {n}")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def zigzag(n: int) -> int:
    """Signed -> unsigned (0, -1, 1, -2 ... -> 0, 1, 2, 3 ...) so small negatives stay short."""
    return 2 * n if n >= 0 else -2 * n - 1


def unzigzag(n: int) -> int:
    return n >> 1 if n % 2 == 0 else -((n + 1) >> 1)


class Reader:
    """Sequential reader over ``data`` that checks every length before using it.

    ``base`` is the file offset of ``data[0]``, so that every error names the byte of the
    *file* where the bad field starts (see :class:`CorruptFileError`)."""

    def __init__(self, data: bytes | memoryview, what: str = "file", base: int = 0):
        self.data = memoryview(data)
        self.pos = 0
        self.what = what
        self.base = base

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    @property
    def offset(self) -> int:
        """File offset of the next byte to read."""
        return self.base + self.pos

    def error(self, message: str, at: int | None = None) -> CorruptFileError:
        """A :class:`CorruptFileError` about this reader's data; ``at``: a position in it
        (default: the next byte to read)."""
        return CorruptFileError(f"{self.what}: {message}", self.base + (self.pos if at is None else at))

    def take(self, n: int, field: str = "data") -> memoryview:
        if n < 0 or n > self.remaining:
            raise self.error(f"{field} claims {n} bytes but only {self.remaining} remain (truncated or corrupt)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self, field: str = "byte") -> int:
        return self.take(1, field)[0]

    def u32(self, field: str = "u32") -> int:
        return int.from_bytes(self.take(4, field), "little")

    def varint(self, field: str = "length", limit: int = 1 << 62) -> int:
        """An unsigned LEB128 of at most 10 bytes, at most ``limit`` (so no field can wrap a
        64-bit integer, and every count is bounded before it is used)."""
        start = self.pos
        shift = result = 0
        while True:
            byte = self.u8(field)
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 63:
                raise self.error(f"{field} is a varint longer than 64 bits", start)
        if result > limit:
            raise self.error(f"{field} = {result} exceeds the limit {limit}", start)
        return result

    def varints(self, count: int, field: str = "length", limit: int = 1 << 62) -> np.ndarray:
        """``count`` consecutive varints at once (int64), each at most ``limit`` (< 2^63)."""
        if count == 0:
            return np.zeros(0, dtype=np.int64)
        start = self.pos
        window = np.frombuffer(self.data[start:start + min(self.remaining, 9 * count)], dtype=np.uint8)
        ends = np.flatnonzero(window < 0x80)[:count]  # the last byte of each varint
        if len(ends) < count:
            raise self.error(f"{field}: {count} varints run past the end of the data", start)
        begins = np.concatenate([[0], ends[:-1] + 1])
        if (ends - begins).max() >= 9:  # more than 63 bits: past any limit this format uses
            raise self.error(f"{field} is a varint longer than 63 bits", start)
        used = window[:ends[-1] + 1].astype(np.uint64)
        group = np.repeat(np.arange(count), ends - begins + 1)
        shifts = (np.arange(len(used)) - begins[group]).astype(np.uint64) * np.uint64(7)
        # the 7-bit groups of one varint occupy disjoint bits: summing them is OR-ing them
        values = np.add.reduceat((used & np.uint64(0x7F)) << shifts, begins).astype(np.int64)
        over = np.flatnonzero(values > limit)
        if len(over):
            raise self.error(f"{field} = {int(values[over[0]])} exceeds the limit {limit}", start + int(begins[over[0]]))
        self.pos = start + int(ends[-1]) + 1
        return values

    def expect_end(self) -> None:
        if self.remaining:
            raise self.error(f"{self.remaining} unexpected trailing bytes")


def packed_size(n: int, width: int) -> int:
    """Bytes of ``n`` values packed at ``width`` bits each."""
    return (n * width + 7) // 8


def _uint(width: int) -> type:
    """The narrowest numpy unsigned type holding ``width`` bits (keeps temporaries small)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if width <= np.dtype(dtype).itemsize * 8:
            return dtype
    return np.uint64


def pack(values: np.ndarray, width: int) -> bytes:
    """Pack unsigned integers (each < 2^width) MSB-first at ``width`` bits each."""
    values = np.asarray(values).reshape(-1)
    if width == 0 or values.size == 0:
        return b""
    dtype = _uint(width)
    values = values.astype(dtype)
    shifts = np.arange(width - 1, -1, -1, dtype=dtype)
    bitmatrix = ((values[:, None] >> shifts) & dtype(1)).astype(np.uint8)
    return np.packbits(bitmatrix.reshape(-1)).tobytes()


#: Widths a packed stream may have: every symbol costs at least one bit (so a count is backed by
#: its bytes), and values stay below 2^32 (so no decoded integer wraps a signed 64-bit one).
MAX_PACKED_WIDTH = 32


def unpack(data: bytes | memoryview, n: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack`: ``n`` unsigned integers, each < 2^width (int32 for widths up
    to 31, int64 for 32, so that no value reads as negative)."""
    if not 1 <= width <= MAX_PACKED_WIDTH:
        raise CorruptFileError(f"packed stream width {width} not in [1, {MAX_PACKED_WIDTH}]")
    if len(data) != packed_size(n, width):
        raise CorruptFileError(f"packed stream of {n} x {width} bits needs {packed_size(n, width)} bytes, got {len(data)}")
    result = np.int32 if width < 32 else np.int64
    raw = np.frombuffer(data, dtype=np.uint8)
    if width == 8:
        return raw[:n].astype(result)
    # 8 values fill ``width`` bytes exactly, and value j of a group starts at bit j * width of
    # it: one column op per j over the groups, each value read from the <= 4 bytes it spans
    # (the general path takes 5 bytes for widths past 25).
    groups = -(-n // 8)
    padded = np.zeros(groups * width, dtype=np.uint8)
    padded[:len(raw)] = raw
    b = padded.reshape(groups, width)
    out = np.empty((groups, 8), dtype=_uint(width))
    for j in range(8):
        first, offset = divmod(j * width, 8)
        span = (offset + width + 7) // 8
        acc = b[:, first].astype(np.uint64 if span > 4 else np.uint32)
        for k in range(1, span):
            acc = (acc << acc.dtype.type(8)) | b[:, first + k]
        out[:, j] = (acc >> acc.dtype.type(8 * span - offset - width)) & acc.dtype.type((1 << width) - 1)
    return out.reshape(-1)[:n].astype(result)
