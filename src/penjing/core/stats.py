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


def stored_weight(module: nn.Module) -> torch.Tensor | None:
    """The weight as ``module`` stores it: int8 layers' integers (``weight_int8``), the
    integers inside a ``torch.ao`` quantized layer's packed weight (its ``weight()``, as the
    int8 graph of ``pj.convert`` holds), else its ``weight`` tensor."""
    weight = getattr(module, "weight_int8", None)
    weight = getattr(module, "weight", None) if weight is None else weight
    if callable(weight) and not isinstance(weight, torch.Tensor) and hasattr(module, "_weight_bias"):
        weight = weight()
    return weight.int_repr() if isinstance(weight, torch.Tensor) and weight.is_quantized else weight


def weight_bits(module: nn.Module, name: str = "weight") -> float:
    """Bits per stored weight value: the smallest ``bits`` of its parametrizations, else dtype."""
    declared = [p.bits for p in parametrizations(module, name) if getattr(p, "bits", None)]
    if declared:
        return float(min(declared))
    tensor = stored_weight(module) if name == "weight" else getattr(module, name)
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
        weight = stored_weight(module)  # int8 layers: the stored integers, not the float view
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
        packed = hasattr(module, "_weight_bias")  # a torch.ao quantized layer: packed weight and bias
        bias = bias() if callable(bias) and packed else bias
        kind = module._get_name() if packed else type_name(module)  # "QuantizedLinear", not "Linear"
        rows.append(
            LayerStats(
                name=name or "(root)",
                type=kind,
                shape=tuple(w.shape),
                params=params,
                nonzeros=nonzeros,
                bits=bits,
                bytes=estimate_bytes(params, nonzeros, bits, kind),
                bias_params=bias.numel() if isinstance(bias, torch.Tensor) else 0,
            )
        )
    return rows
