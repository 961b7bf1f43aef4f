"""Pick a runtime layer for a Linear / Conv2d weight, from a dense tensor or its stored form,
and the ``auto`` choice: time kernel and dense on the layer's own input shape, keep the faster."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from penjing.codec.tensors import StoredSparse
from penjing.core.layers import is_hf_conv1d
from penjing.runtime.formats import MAX_CODE_BITS, BitWeights, SparseWeights
from penjing.runtime.modules import (
    BinaryLinear,
    CodebookLinear,
    RuntimeLayer,
    SparseConv2d,
    SparseLinear,
    TernaryLinear,
    block_diagonal,
    block_diagonal_positions,
)

#: Below this density a plain fp32 weight is worth a sparse kernel (above it, dense BLAS wins).
MAX_SPARSE_DENSITY = 0.5


def _bits_from_stored(s: StoredSparse, rows: int, cols: int) -> BitWeights | None:
    """Ternary / binary planes from a codebook of one negative and/or one positive value."""
    if s.codebook is None or s.codebook.numel() > 3:
        return None
    book = s.codebook.to(torch.float32)  # (a dense codebook codec keeps 0 in its book; no index points there)
    if int((book > 0).sum()) > 1 or int((book < 0).sum()) > 1:
        return None
    vals = book[torch.as_tensor(s.indices, dtype=torch.int64)]
    pos = torch.as_tensor(s.positions, dtype=torch.int64)
    plus = torch.zeros(rows * cols, dtype=torch.bool)
    minus = torch.zeros(rows * cols, dtype=torch.bool)
    plus[pos[vals > 0]] = True
    minus[pos[vals < 0]] = True
    a = float(book[book > 0][0]) if bool((book > 0).any()) else 0.0
    b = -float(book[book < 0][0]) if bool((book < 0).any()) else 0.0
    plus, minus = plus.reshape(rows, cols), minus.reshape(rows, cols)
    sa, sb = torch.full((rows,), a), torch.full((rows,), b)
    if len(s.positions) == rows * cols and a == b:
        return BitWeights(rows, cols, False, BitWeights.pack_plane(plus), None, sa, None)
    return BitWeights(rows, cols, True, BitWeights.pack_plane(plus), BitWeights.pack_plane(minus), sa, sb)


def sparse_from_stored(s: StoredSparse, rows: int, cols: int) -> SparseWeights:
    """The kernels' layout straight from the file's positions and values / codebook indices."""
    if s.codebook is not None:
        book = s.codebook.to(torch.float32)
        if book.numel() <= 1 << MAX_CODE_BITS:
            return SparseWeights.from_positions(rows, cols, s.positions, codes=s.indices, centroids=book)
        return SparseWeights.from_positions(rows, cols, s.positions,
                                            values=book[torch.as_tensor(s.indices, dtype=torch.int64)])
    return SparseWeights.from_positions(rows, cols, s.positions, values=s.values.to(torch.float32))


def _weights_for(weight: torch.Tensor | StoredSparse, rows: int, cols: int, allow_bits: bool
                 ) -> SparseWeights | BitWeights | str:
    if isinstance(weight, StoredSparse):
        bits = _bits_from_stored(weight, rows, cols) if allow_bits else None
        return bits if bits is not None else sparse_from_stored(weight, rows, cols)
    w = weight.detach().to(torch.float32).reshape(rows, cols)
    if allow_bits:
        bits = BitWeights.detect(w)
        if bits is not None:
            return bits
    sparse = SparseWeights.from_dense(w)
    if sparse.kind == "f32" and sparse.nnz > MAX_SPARSE_DENSITY * rows * cols:
        return _too_dense(sparse.nnz, rows * cols)
    return sparse


def _too_dense(nnz: int, numel: int) -> str:
    return (f"{nnz / max(numel, 1):.0%} of the weights are nonzero: above {MAX_SPARSE_DENSITY:.0%}, "
            "dense BLAS is faster than a sparse kernel")


def takes_kernel(module: nn.Module) -> bool:
    """Is ``module`` of a type some kernel runs (its weight decides whether one does)?"""
    return isinstance(module, (nn.Linear, nn.Conv2d)) or is_int8_layer(module) or is_hf_conv1d(module)


def transposed_stored(s: StoredSparse) -> StoredSparse:
    """A stored ``[a, b]`` tensor as ``[b, a]``: positions mapped and put back in ascending order."""
    a, b = s.shape
    pos = np.asarray(s.positions, dtype=np.int64)
    moved = (pos % b) * a + pos // b
    order = np.argsort(moved, kind="stable")
    return StoredSparse((b, a), moved[order],
                        values=None if s.values is None else s.values[torch.from_numpy(order)],
                        codebook=s.codebook, indices=None if s.indices is None else np.asarray(s.indices)[order])


def is_int8_layer(module: nn.Module) -> bool:
    """An int8 Linear / Conv2d of ``pj.convert`` (layer mode): its integers in ``weight_int8``,
    per-channel ``weight_scale``, and its input rounding as :meth:`float_input_grid`."""
    return hasattr(module, "weight_int8") and hasattr(module, "float_input_grid")


def _int8_nonzeros(weight: torch.Tensor | StoredSparse) -> tuple[np.ndarray, torch.Tensor] | None:
    """(ascending flat positions, int8 values) of an int8 weight's nonzeros."""
    if isinstance(weight, StoredSparse):
        values = weight.nonzero_values()
        return (np.asarray(weight.positions, dtype=np.int64), values) if values.dtype == torch.int8 else None
    if weight.dtype != torch.int8:
        return None
    flat = weight.detach().reshape(-1)
    pos = torch.nonzero(flat).reshape(-1)
    return pos.numpy(), flat[pos]


_ZERO_PADDING = "the kernels pad with zeros given as numbers; this layer pads otherwise"


def _int8_runtime_layer(module: nn.Module, weight, bias) -> RuntimeLayer | str:
    """``pj.convert``'s int8 Linear / Conv2d as a sparse int8 layer: the same integers and
    per-channel scales, its input rounded to the same grid in float (``float_input_grid``),
    its fused ReLU after. The reason instead where the kernels cannot: asymmetric weights (a
    zero-point per channel, which the kernels do not subtract), non-zero padding modes, dense
    weights."""
    if bool((module.weight_zero_point != 0).any()):
        return "asymmetric int8 weights (a zero point per channel): the kernels take symmetric int8"
    w = module.weight_int8 if weight is None else weight
    shape = tuple(w.shape)
    rows, cols = shape[0], math.prod(shape[1:])
    nonzeros = _int8_nonzeros(w)
    if nonzeros is None:
        return "its stored weight is not int8"
    if len(nonzeros[0]) > MAX_SPARSE_DENSITY * rows * cols:
        return _too_dense(len(nonzeros[0]), rows * cols)
    positions, values = nonzeros
    conv = len(shape) == 4
    groups = module.groups if conv else 1
    if conv:
        if getattr(module, "padding_mode", "zeros") != "zeros" or isinstance(getattr(module, "padding_arg", 0), str):
            return _ZERO_PADDING
        positions = block_diagonal_positions(positions, rows, cols, groups)
    grid = module.float_input_grid()
    # the input's step folded into the channel scales, a float32 product as fbgemm forms it
    scales = module.weight_scale.float() * torch.tensor(1.0 if grid is None else grid.step, dtype=torch.float32)
    made = SparseWeights.from_positions(rows, groups * cols, positions, values=values, scales=scales)
    if conv:
        layer = SparseConv2d(made, bias, shape[1] * groups, shape[2:], module.stride, module.padding, module.dilation,
                             groups)
    else:
        layer = SparseLinear(made, bias)
    return layer.takes_int8_input(grid, module.fused_relu)


def runtime_layer(module: nn.Module, weight: torch.Tensor | StoredSparse | None = None,
                  bias: torch.Tensor | None = None) -> RuntimeLayer | None:
    """The runtime layer for ``module`` (an ``nn.Linear`` or ``nn.Conv2d``, or an int8 one of
    ``pj.convert``, :func:`is_int8_layer`) with ``weight`` (default: the module's own,
    parametrized or baked), or ``None`` when no kernel applies (:func:`kernel_layer` says why)."""
    made = kernel_layer(module, weight, bias)
    return None if isinstance(made, str) else made


#: the layers a kernel can take (the reason given for any other weighted layer)
KERNEL_LAYERS = "Linear, Conv2d, Hugging Face Conv1D and pj.convert's int8 Linear / Conv2d"


def kernel_layer(module: nn.Module, weight: torch.Tensor | StoredSparse | None = None,
                 bias: torch.Tensor | None = None) -> RuntimeLayer | str:
    """:func:`runtime_layer`, or the reason no kernel applies (the text the reports show)."""
    if not takes_kernel(module):
        return f"no kernel for {type(module).__name__} (the kernels take {KERNEL_LAYERS})"
    b = module.bias if bias is None else bias
    if is_int8_layer(module):
        return _int8_runtime_layer(module, weight, b)
    w = module.weight if weight is None else weight
    if is_hf_conv1d(module):  # y = x @ W + b with W [in, out]: a Linear of W's transpose
        w = transposed_stored(w) if isinstance(w, StoredSparse) else w.detach().t()
    if isinstance(module, nn.Linear) or is_hf_conv1d(module):
        rows, cols = (module.nf, w.shape[1]) if is_hf_conv1d(module) else (module.out_features, module.in_features)
        made = _weights_for(w, rows, cols, allow_bits=True)
        if isinstance(made, str):
            return made
        if isinstance(made, BitWeights):
            return TernaryLinear(made, b) if made.ternary else BinaryLinear(made, b)
        return CodebookLinear(made, b) if made.kind == "codebook" else SparseLinear(made, b)
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            return _ZERO_PADDING
        g, rows = module.groups, module.out_channels
        cols = module.in_channels // g * module.kernel_size[0] * module.kernel_size[1]
        if isinstance(w, StoredSparse):
            w = dataclasses.replace(w, shape=(rows, g * cols),
                                    positions=block_diagonal_positions(w.positions, rows, cols, g))
        else:
            w = w.detach().to(torch.float32).reshape(rows, cols)
            nnz = int(torch.count_nonzero(w))
            if g > 1 and nnz > MAX_SPARSE_DENSITY * w.numel():
                return _too_dense(nnz, w.numel())  # (of the grouped weight, not its block-diagonal form)
            w = block_diagonal(w, g)
        made = _weights_for(w, rows, g * cols, allow_bits=False)
        if isinstance(made, str):
            return made
        return SparseConv2d(made, b, module.in_channels, module.kernel_size, module.stride, module.padding,
                            module.dilation, g)


def dense_twin(layer: RuntimeLayer) -> nn.Module:
    """The dense ``nn.Linear`` / ``nn.Conv2d`` a runtime layer stands for (its reference)."""
    w = layer.dense_weight()
    bias = layer.bias
    if isinstance(layer, SparseConv2d):
        m = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                      layer.dilation, layer.groups, bias=bias is not None, device="meta")
    else:
        m = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None, device="meta")
    m.weight = nn.Parameter(w, requires_grad=False)
    if bias is not None:
        m.bias = nn.Parameter(bias.clone(), requires_grad=False)
    return m


def dense_call(layer: RuntimeLayer, weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``F.linear`` / ``F.conv2d`` with ``weight``: the dense reference a layer is timed against."""
    if isinstance(layer, SparseConv2d):
        return lambda x: F.conv2d(x, weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    return lambda x: F.linear(x, weight, layer.bias)


@torch.no_grad()
def time_pair(a: Callable, b: Callable, x: torch.Tensor, rounds: int = 7, warmup: int = 2) -> tuple[float, float]:
    """Median seconds of ``a(x)`` and ``b(x)``, interleaved round by round."""
    for _ in range(warmup):
        a(x)
        b(x)
    ta, tb = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        a(x)
        t1 = time.perf_counter()
        b(x)
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return statistics.median(ta), statistics.median(tb)


def input_for(layer: RuntimeLayer, batch: int, spatial: tuple[int, int] | None) -> torch.Tensor:
    if isinstance(layer, SparseConv2d):
        if spatial is None:
            raise ValueError("timing a conv layer needs its input size: pass example=<an input tensor>")
        return torch.randn(batch, layer.in_channels, *spatial)
    return torch.randn(batch, layer.in_features)


@torch.no_grad()
def input_shapes(model: nn.Module, example, modules: dict[str, nn.Module]) -> dict[str, tuple[int, ...]]:
    """The first input's full shape of each of ``modules`` (name -> module) when ``model`` runs
    on ``example`` once (layers that never run are absent)."""
    shapes: dict[str, tuple[int, ...]] = {}
    # (a pre-hook's return value would replace the input: these return None)
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=name: shapes.setdefault(n, tuple(a[0].shape)) and None)
             for name, m in modules.items()]
    try:
        model(example)
    finally:
        for h in hooks:
            h.remove()
    return shapes
