"""Turn a compressed penjing model into a plain float (or QDQ) module that ONNX can express.

Works on a deep copy; the caller's model is never changed. What happens per representation:

* parametrizations (pruning masks, shared weights, fake-quantized or ternary weights) are
  baked into plain tensors with :func:`penjing.bake`: a pruned or shared model exports as its
  dense float graph, a structured-pruned or low-rank one as its (smaller / factorised) layers;
* :class:`~penjing.winograd_conv.WinogradConv2d` becomes the ``nn.Conv2d`` it computes (ONNX
  Runtime picks its own conv algorithm; the transforms would only bloat the graph);
* :class:`~penjing.lowbit.mulfree.TernaryLinear` becomes an ``nn.Linear`` with its dense
  ``{-Wn, 0, +Wp}`` weight;
* XNOR-style binary inputs keep their sign, written with ``torch.where`` (the straight-through
  autograd Function has no ONNX form);
* int8 layers (after :func:`penjing.convert`) become :mod:`~penjing.export.qdq` modules
  (static inputs) or :mod:`~penjing.export.dynamic` ones (per-row dynamic inputs, weight-only);
* activation fake-quantizers of a quantized-but-not-converted model stay (8-bit: exported as
  QDQ); ones on grids ONNX lacks raise an error naming the layer.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from penjing.core.params import bake
from penjing.export.dynamic import DynamicInt8Linear, WeightOnlyConv2d, WeightOnlyLinear
from penjing.export.qdq import QDQConv2d, QDQLinear, onnx_grid


def _sign_input(_module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: binarized input as in XNOR-Net (x > 0 -> +1, else -1), no autograd."""
    x = args[0]
    return (torch.where(x > 0, torch.ones_like(x), -torch.ones_like(x)), *args[1:])


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if not name:
        return new
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)
    return model


def _plain_conv(conv: nn.Conv2d) -> nn.Conv2d:
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
    plain.load_state_dict({k: v for k, v in conv.state_dict().items() if k in ("weight", "bias")})
    return plain


def _dense_linear(layer: nn.Module) -> nn.Linear:
    linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        linear.weight.copy_(layer.dense_weight())
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
    return linear


def _check_act_quant(name: str, module: nn.Module) -> None:
    quant = getattr(module, "input_quant", None)
    if quant is None or not hasattr(quant, "spec") or not getattr(quant, "enabled", False):
        return
    qmin, qmax = quant.spec.qrange
    if (qmin, qmax) != onnx_grid(qmin, qmax):
        raise ValueError(f"layer {name!r} ({type(module).__name__}): its {quant.spec.bits}-bit input "
                         f"quantizer (grid {qmin}..{qmax}) has no ONNX QuantizeLinear form (full 8-bit "
                         "grids only); convert the model first (penjing.convert) or export the float model")


def export_ready(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` in eval mode that ONNX can express, and notes on what changed.

    Raises ``ValueError`` naming the first layer that has no ONNX form.
    """
    from penjing.lowbit.binary import BinaryInput
    from penjing.lowbit.mulfree import TernaryLinear
    from penjing.quantization.int_kernels import Int8Conv2d, Int8Linear
    from penjing.winograd_conv.conv import WinogradConv2d

    if "_pj_int8_graph" in model.__dict__:  # torch.ao quantized modules in an fx graph
        raise ValueError("this model runs penjing's int8 graph (pj.convert's default for CNNs), which ONNX "
                         "export does not read; convert it layer by layer: pj.convert(model, graph=False)")

    # int8 layers cache packed vendor weights that cannot be copied: the copy starts without
    memo = {id(m._packed): None for m in model.modules() if isinstance(m, (Int8Linear, Int8Conv2d))
            and m._packed is not None}
    ready = bake(copy.deepcopy(model, memo)).eval()
    notes: list[str] = []
    kinds: dict[str, int] = {}
    for name, module in list(ready.named_modules()):
        new, kind = None, None
        if isinstance(module, Int8Linear):
            new = {"dynamic": DynamicInt8Linear, "weight": WeightOnlyLinear}.get(module.mode, QDQLinear)(module, name)
            kind = {"dynamic": "Int8Linear (dynamic)", "weight": "Int8Linear (weight-only)"}.get(module.mode)
        elif isinstance(module, Int8Conv2d):
            new = (WeightOnlyConv2d if module.mode == "weight" else QDQConv2d)(module, name)
            kind = "Int8Conv2d (weight-only)" if module.mode == "weight" else None
        elif isinstance(module, WinogradConv2d):
            new = _plain_conv(module)
        elif isinstance(module, TernaryLinear):
            new = _dense_linear(module)
        if new is not None:
            kind = kind or type(module).__name__
            kinds[kind] = kinds.get(kind, 0) + 1
            ready = _replace(ready, name, new.eval())
            continue
        _check_act_quant(name, module)
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, BinaryInput):
                module._forward_pre_hooks[key] = _sign_input
                kinds["binary input"] = kinds.get("binary input", 0) + 1
    targets = {"Int8Linear": "QDQ Linear", "Int8Conv2d": "QDQ Conv", "WinogradConv2d": "Conv",
               "Int8Linear (dynamic)": "per-row int8 MatMulInteger",
               "Int8Linear (weight-only)": "DequantizeLinear + MatMul",
               "Int8Conv2d (weight-only)": "DequantizeLinear + Conv",
               "TernaryLinear": "dense Linear", "binary input": "sign (Where)"}
    notes += [f"{n} {kind} -> {targets[kind]}" for kind, n in kinds.items()]
    return ready, notes
