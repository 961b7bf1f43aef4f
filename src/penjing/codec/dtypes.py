"""The tensor dtypes a ``.pjz`` file can hold, by a one-byte code, and their bit views.

Every codec works on the *bit patterns* of the values (a float32 viewed as an unsigned 32-bit
integer), so what comes back is bit-identical: ``-0.0`` stays ``-0.0``, NaN payloads survive,
and only the pattern of all zero bits counts as a zero for the sparse codecs.
"""

from __future__ import annotations

import numpy as np
import torch

from penjing.codec.errors import CorruptFileError

DTYPES: list[torch.dtype] = [
    torch.float32, torch.float16, torch.bfloat16, torch.float64,
    torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool,
]
CODE = {dtype: i for i, dtype in enumerate(DTYPES)}
_UNSIGNED = {1: (torch.uint8, np.uint8), 2: (torch.int16, np.uint16), 4: (torch.int32, np.uint32),
             8: (torch.int64, np.uint64)}


def dtype_code(dtype: torch.dtype) -> int:
    if dtype not in CODE:
        raise ValueError(f"the .pjz format cannot store dtype {dtype}; supported: "
                         + ", ".join(str(d).removeprefix("torch.") for d in DTYPES))
    return CODE[dtype]


def dtype_of(code: int) -> torch.dtype:
    if code >= len(DTYPES):
        raise CorruptFileError(f"unknown dtype code {code}")
    return DTYPES[code]


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def to_bits(tensor: torch.Tensor) -> np.ndarray:
    """Flat unsigned-integer numpy view of the tensor's bit patterns (a copy, contiguous)."""
    t = tensor.detach().cpu().contiguous().reshape(-1)
    signed, unsigned = _UNSIGNED[t.element_size()]
    return t.view(signed).numpy().view(unsigned).copy()


def from_bits(bits: np.ndarray, dtype: torch.dtype, shape: tuple[int, ...], copy: bool = True) -> torch.Tensor:
    """Inverse of :func:`to_bits`. ``copy=False``: ``bits`` (writable, of the right unsigned
    type) becomes the tensor's memory, saving a pass over a large decoded tensor."""
    _, unsigned = _UNSIGNED[itemsize(dtype)]
    signed_np = _NUMPY_SIGNED[itemsize(dtype)]  # torch.from_numpy wants a type torch also has
    reuse = not copy and bits.dtype == unsigned and bits.flags.writeable and bits.flags.c_contiguous
    arr = (bits if reuse else np.array(bits, dtype=unsigned, copy=True)).view(signed_np)
    return torch.from_numpy(arr).view(dtype).reshape(shape)


_NUMPY_SIGNED = {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}
