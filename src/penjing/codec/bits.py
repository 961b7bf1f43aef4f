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
    """Sequential reader over ``data`` that checks every length before using it."""

    def __init__(self, data: bytes | memoryview, what: str = "file"):
        self.data = memoryview(data)
        self.pos = 0
        self.what = what

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, field: str = "data") -> memoryview:
        if n < 0 or n > self.remaining:
            raise CorruptFileError(
                f"{self.what}: {field} claims {n} bytes but only {self.remaining} remain (truncated or corrupt)"
            )
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self, field: str = "byte") -> int:
        return self.take(1, field)[0]

    def u32(self, field: str = "u32") -> int:
        return int.from_bytes(self.take(4, field), "little")

    def varint(self, field: str = "length", limit: int = 1 << 62) -> int:
        shift = result = 0
        while True:
            byte = self.u8(field)
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 63:
                raise CorruptFileError(f"{self.what}: {field} is a varint longer than 64 bits")
        if result > limit:
            raise CorruptFileError(f"{self.what}: {field} = {result} exceeds the limit {limit}")
        return result

    def expect_end(self) -> None:
        if self.remaining:
            raise CorruptFileError(f"{self.what}: {self.remaining} unexpected trailing bytes")


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


def unpack(data: bytes | memoryview, n: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack`: ``n`` unsigned integers (uint64)."""
    if width == 0:
        return np.zeros(n, dtype=np.uint64)
    if len(data) != packed_size(n, width):
        raise CorruptFileError(f"packed stream of {n} x {width} bits needs {packed_size(n, width)} bytes, got {len(data)}")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=n * width).reshape(n, width)
    dtype = _uint(width)
    out = np.zeros(n, dtype=dtype)
    # Fold the columns MSB-first: ``width`` vector ops in the narrowest type that fits.
    for j in range(width):
        out = (out << dtype(1)) | bits[:, j].astype(dtype)
    return out.astype(np.uint64)
