"""Size and bit accounting per layer, the numbers every report prints.

``bytes`` here is an *estimate* of the stored size of a layer's weights under its current
representation (before a file is written): dense layers cost ``params * bits / 8``; sparse
layers are costed as in Deep Compression, each nonzero storing its value at ``bits`` plus a
relative index of ``index_bits`` (5 for Linear, 8 for conv). Once a compressed file is
written, the reports print the real bytes of that file instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from penjing.core.params import parametrizations
from penjing.core.select import WEIGHTED_TYPES, type_name

#: Relative-index widths of Deep Compression (Han et al. 2016): 8 bits conv, 5 bits fc.
INDEX_BITS = {"Linear": 5, "conv": 8}


@dataclass
class LayerStats:
    name: str
    type: str
    shape: tuple[int, ...]
    params: int
    nonzeros: int
    bits: float
    bytes: float
    bias_params: int = 0

    @property
    def kept(self) -> float:
        """Fraction of weights that are nonzero."""
        return self.nonzeros / self.params if self.params else 0.0

    @property
    def dense_bytes(self) -> int:
        return 4 * (self.params + self.bias_params)


def weight_bits(module: nn.Module, name: str = "weight") -> float:
    """Bits per stored weight value: the smallest ``bits`` of its parametrizations, else dtype."""
    declared = [p.bits for p in parametrizations(module, name) if getattr(p, "bits", None)]
    if declared:
        return float(min(declared))
    tensor = getattr(module, name + "_int8", None) if name == "weight" else None  # int8 layers' stored integers
    tensor = getattr(module, name) if tensor is None else tensor
    return float(torch.finfo(tensor.dtype).bits if tensor.is_floating_point() else torch.iinfo(tensor.dtype).bits)


def estimate_bytes(params: int, nonzeros: int, bits: float, layer_type: str) -> float:
    dense = params * bits / 8
    if nonzeros == params:
        return dense
    index_bits = INDEX_BITS["Linear"] if layer_type.endswith("Linear") else INDEX_BITS["conv"]
    sparse = nonzeros * (bits + index_bits) / 8
    return min(dense, sparse)


def layer_stats(model: nn.Module, types: tuple[type, ...] = WEIGHTED_TYPES) -> list[LayerStats]:
    """One :class:`LayerStats` per weighted layer of ``model`` (any module with a ``weight``
    tensor of a supported type, any module whose weight carries a parametrization, and any
    module that stores an integer ``weight``, such as a converted int8 layer)."""
    rows = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight_int8", None)  # int8 layers: the stored integers, not the float view
        weight = getattr(module, "weight", None) if weight is None else weight
        if not isinstance(weight, torch.Tensor):
            continue
        # integer weights: a layer converted for integer execution (e.g. Int8Linear) counts too
        if not isinstance(module, types) and not parametrizations(module) and weight.is_floating_point():
            continue
        with torch.no_grad():
            w = weight.detach()
            params = w.numel()
            nonzeros = int(torch.count_nonzero(w))
        bits = weight_bits(module)
        bias = getattr(module, "bias", None)
        rows.append(
            LayerStats(
                name=name or "(root)",
                type=type_name(module),
                shape=tuple(w.shape),
                params=params,
                nonzeros=nonzeros,
                bits=bits,
                bytes=estimate_bytes(params, nonzeros, bits, type_name(module)),
                bias_params=bias.numel() if isinstance(bias, torch.Tensor) else 0,
            )
        )
    return rows
