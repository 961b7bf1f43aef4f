"""Bit packing: 1 bit per binary weight, 2 bits per ternary weight, and an entropy-coded
ternary stream for sparse ternary layers.

Every ``unpack_*`` checks the length it is given against the number of weights it must
produce before reading, so a truncated or corrupt buffer is an error, not garbage.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch
from torch import Tensor

#: 2-bit ternary code of each value; code 3 is never written and is an error on read.
_TERNARY_TO_CODE = {0: 0, 1: 1, -1: 2}


def _as_numpy_u8(packed: Tensor | bytes) -> np.ndarray:
    if isinstance(packed, (bytes, bytearray)):
        return np.frombuffer(bytes(packed), dtype=np.uint8)
    if not isinstance(packed, Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError("packed data must be a 1-D uint8 tensor (or bytes)")
    return packed.cpu().numpy()


def _check_count(n: int) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"number of weights must be a non-negative int, got {n!r}")
    return n


def pack_bits(bits: Tensor) -> Tensor:
    """Boolean tensor -> ``ceil(n / 8)`` bytes, 8 weights per byte (little bit order)."""
    flat = bits.detach().reshape(-1).to(torch.bool).cpu().numpy()
    return torch.from_numpy(np.packbits(flat, bitorder="little").copy())


def unpack_bits(packed: Tensor | bytes, n: int) -> Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` bits as a flat boolean tensor."""
    data = _as_numpy_u8(packed)
    n = _check_count(n)
    if data.size != math.ceil(n / 8):
        raise ValueError(f"binary data holds {data.size} bytes; {n} weights need {math.ceil(n / 8)}")
    return torch.from_numpy(np.unpackbits(data, count=n, bitorder="little").astype(bool))


def pack_ternary(codes: Tensor) -> Tensor:
    """Codes in ``{-1, 0, +1}`` -> ``ceil(n / 4)`` bytes, 4 weights per byte (2 bits each:
    ``0 -> 00``, ``+1 -> 01``, ``-1 -> 10``)."""
    c = codes.detach().reshape(-1).to(torch.int16)
    if c.numel() and (c.abs() > 1).any():
        raise ValueError("ternary codes must be in {-1, 0, +1}")
    u = torch.where(c < 0, torch.full_like(c, _TERNARY_TO_CODE[-1]), c).to(torch.uint8)
    pad = (-u.numel()) % 4
    u = torch.cat([u, u.new_zeros(pad)]).reshape(-1, 4)
    return u[:, 0] | (u[:, 1] << 2) | (u[:, 2] << 4) | (u[:, 3] << 6)


def unpack_ternary(packed: Tensor | bytes, n: int) -> Tensor:
    """Inverse of :func:`pack_ternary`: a flat ``int8`` tensor of ``n`` codes."""
    data = torch.from_numpy(_as_numpy_u8(packed).copy())
    n = _check_count(n)
    if data.numel() != math.ceil(n / 4):
        raise ValueError(f"ternary data holds {data.numel()} bytes; {n} weights need {math.ceil(n / 4)}")
    u = torch.stack([(data >> s) & 3 for s in (0, 2, 4, 6)], dim=1).reshape(-1)[:n]
    if (u == 3).any():
        raise ValueError("corrupt ternary data: 2-bit code 3 does not exist")
    return torch.where(u == 2, torch.tensor(-1, dtype=torch.int8), u.to(torch.int8))


#: Five ternary digits fit in one byte (3^5 = 243 <= 256): 1.6 bits per weight before coding.
_TRITS_PER_BYTE = 5
_POW3 = torch.tensor([3**i for i in range(_TRITS_PER_BYTE)], dtype=torch.int32)


def encode_ternary_entropy(codes: Tensor, level: int = 9) -> Tensor:
    """Codes in ``{-1, 0, +1}`` -> an entropy-coded byte stream (flat uint8 tensor).

    Five codes make one base-3 symbol (0..242); the symbol stream is then compressed with
    DEFLATE (zlib: LZ77 + Huffman codes over those 243 symbols). On sparse ternary layers
    (many zeros) this goes below the 2 bits of :func:`pack_ternary`; on dense ones it costs
    at most ~1.6 bits plus a few bytes of header.
    """
    c = codes.detach().reshape(-1).to(torch.int32)
    if c.numel() and (c.abs() > 1).any():
        raise ValueError("ternary codes must be in {-1, 0, +1}")
    pad = (-c.numel()) % _TRITS_PER_BYTE
    digits = torch.cat([c + 1, c.new_zeros(pad)]).reshape(-1, _TRITS_PER_BYTE)
    symbols = (digits * _POW3).sum(1).to(torch.uint8)
    return torch.frombuffer(bytearray(zlib.compress(symbols.numpy().tobytes(), level)), dtype=torch.uint8)


def decode_ternary_entropy(data: Tensor | bytes, n: int) -> Tensor:
    """Inverse of :func:`encode_ternary_entropy`: a flat ``int8`` tensor of ``n`` codes."""
    raw = _as_numpy_u8(data).tobytes()
    n = _check_count(n)
    expected = math.ceil(n / _TRITS_PER_BYTE)
    inflater = zlib.decompressobj()
    try:
        # max_length bounds what a hostile stream can make us allocate
        symbols = inflater.decompress(raw, expected + 1)
    except zlib.error as exc:
        raise ValueError(f"corrupt entropy-coded ternary data ({exc})") from None
    if len(symbols) != expected or not inflater.eof or inflater.unconsumed_tail:
        raise ValueError(f"entropy-coded ternary data decodes to {len(symbols)} symbols; "
                         f"{n} weights need exactly {expected}")
    s = torch.from_numpy(np.frombuffer(symbols, dtype=np.uint8).astype(np.int32))
    if (s > 242).any():
        raise ValueError("corrupt entropy-coded ternary data: symbol above 242")
    digits = (s.unsqueeze(1) // _POW3) % 3
    return (digits.reshape(-1)[:n] - 1).to(torch.int8)


def entropy_bits_per_weight(codes: Tensor) -> float:
    """Shannon entropy of the code distribution (bits per weight): the bound an entropy coder
    of independent codes approaches."""
    c = codes.reshape(-1)
    if c.numel() == 0:
        return 0.0
    p = torch.stack([(c == v).float().mean() for v in (-1, 0, 1)])
    p = p[p > 0]
    return float(-(p * p.log2()).sum())
