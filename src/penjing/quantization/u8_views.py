"""``quint8`` <-> plain ``uint8`` on the same memory, without a copy.

The int8 graph's oneDNN convs take and give plain uint8 tensors; torch.ao's modules and ops
(max pooling, ``quantized::add``, linear) take and give ``quint8`` ones. PyTorch's own
conversions copy: ``Tensor.int_repr`` with an elementwise loop (2.6 ms for a 32x64x56x56
tensor, 1 thread, torch 2.14: the copy after resnet18's max pool), and
``torch._make_per_tensor_quantized_tensor`` with a memcpy. Both tensor kinds hold one byte
per element, so a tensor of the other kind set onto the same storage is the conversion:
0.003 ms. The views alias: whoever writes into one (a fused residual sum writes its result
into its ``accum`` input) must know that nothing reads the other afterwards
(:meth:`penjing.quantization.int8_graph._Builder.accum_for`).
"""

from __future__ import annotations

import functools
import warnings

import torch


@functools.cache
def views_work() -> bool:
    """Does this PyTorch set a quint8 tensor onto a uint8 tensor's storage and back?
    (Probed once; where it does not, :func:`uint8_view` / :func:`quint8_view` copy.)"""
    try:
        u = torch.arange(8, dtype=torch.uint8).reshape(2, 4)
        q = _set_quint8(u, 0.5, 3)
        back = _set_uint8(q)
        return (q.data_ptr() == u.data_ptr() == back.data_ptr() and torch.equal(q.int_repr(), u)
                and q.q_scale() == 0.5 and q.q_zero_point() == 3)
    except (RuntimeError, TypeError):
        return False


def _set_uint8(q: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8).set_(q.untyped_storage(), q.storage_offset(), q.size(), q.stride())


def _set_quint8(u: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # quantized tensors' deprecation notice
        q = torch._empty_affine_quantized([0], scale=scale, zero_point=zero_point, dtype=torch.quint8)
    return q.set_(u.untyped_storage(), u.storage_offset(), u.size(), u.stride())


def uint8_view(q: torch.Tensor) -> torch.Tensor:
    """The integers of the ``quint8`` tensor ``q`` as a ``uint8`` tensor on its memory."""
    return _set_uint8(q) if views_work() else q.int_repr()


def quint8_view(u: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """The ``uint8`` tensor ``u`` as a ``quint8`` tensor on its memory, with that grid."""
    if views_work():
        return _set_quint8(u, scale, zero_point)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch._make_per_tensor_quantized_tensor(u, scale, zero_point)
