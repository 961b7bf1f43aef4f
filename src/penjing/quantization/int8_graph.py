"""int8 activations that flow from layer to layer: the fusion plan and the fx graph rewrite.

:func:`penjing.convert` on a statically calibrated model that ``torch.fx`` can trace rewrites
its graph so consecutive int8 ops hand each other ``quint8`` tensors, and float appears only
at the graph's edges and around ops with no int8 form. penjing supplies the calibrated scales
(:mod:`.graph_ranges`, the input quantizers) and the plan; the kernels are the ones PyTorch
ships for x86 (``torch.ao.nn.quantized`` modules and ``quantized::*`` ops on the x86 engine,
which picks fbgemm or oneDNN per op, using VNNI / AMX where the CPU has them).

The plan, node by node:

* a quantized Conv2d / Linear becomes ``nnq.Conv2d`` / ``nnq.Linear`` (``ConvReLU2d`` /
  ``LinearReLU`` when its only user is a ReLU). Its *output* scale is the requantization of
  the next layer's input folded into the producer: the input scale calibrated for the
  consumer when there is one (so the int8 graph computes what the fake-quantized model
  does), else the calibrated range of the tensor;
* a ReLU6 (or ``hardtanh(0, 6)``) that is a layer's only user is fused like a ReLU: its
  calibrated output range lies inside [0, 6], so the saturation of the int8 output *is* the
  clamp at 6 and no op remains;
* residual sums become ``quantized::add`` / ``add_relu``; Hardswish ``quantized::hardswish``;
* pooling, flatten / reshape, dropout, identities and ReLUs run on the int8 tensor as it is;
* any other op (SiLU, sigmoid, LayerNorm, GELU, a float layer...) gets a dequantized input,
  and the next int8 layer quantizes its output again.
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from penjing.core.report import Report
from penjing.core.select import swap
from penjing.quantization.fake_quant import ActFakeQuant, WeightFakeQuant
from penjing.quantization.graph_ranges import graph_ranges, trace
from penjing.quantization.int_kernels import _has_onednn_conv
from penjing.quantization.per_shape import (
    MAX_SHAPES,
    PerShapeConv2d,
    PerShapeConvReLU2d,
    onednn_runs,
)

_RELU_MODULES = (nn.ReLU,)
_RELU6_MODULES = (nn.ReLU6,)
#: ops that take an int8 tensor and give one with the same scale (or that only read shapes)
_SAME_MODULES = (nn.ReLU, nn.ReLU6, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.Flatten,
                 nn.Identity, nn.Dropout)
_SAME_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.max_pool2d, F.adaptive_avg_pool2d, F.avg_pool2d,
                   torch.flatten, F.dropout, operator.getitem}
_SAME_METHODS = {"relu", "flatten", "view", "reshape", "contiguous", "size", "dim"}
_ADDS = {operator.add, operator.iadd, torch.add}


def _act_quant(module: nn.Module) -> ActFakeQuant | None:
    q = getattr(module, "input_quant", None)
    return q if isinstance(q, ActFakeQuant) and q.enabled else None


def _weight_quant(module: nn.Module) -> WeightFakeQuant | None:
    chain = getattr(getattr(module, "parametrizations", None), "weight", None)
    return next((p for p in chain if isinstance(p, WeightFakeQuant)), None) if chain is not None else None


def _graph_layer(module: nn.Module) -> bool:
    """Can this layer run as an int8-in, int8-out module of the graph?"""
    if not isinstance(module, nn.Conv2d | nn.Linear) or type(module).__name__.startswith("Int8"):
        return False
    wq, act = _weight_quant(module), _act_quant(module)
    if wq is None or act is None or wq.spec.bits > 8 or wq.spec.axis not in (None, 0):
        return False
    if act.spec.qrange[1] - act.spec.qrange[0] > 255 or not bool((wq.zero_point == 0).all()):
        return False
    if isinstance(module, nn.Conv2d) and (isinstance(module.padding, str) or module.padding_mode != "zeros"):
        return False
    return True


@dataclass
class LayerQuant:
    """What the int8 graph needs of one quantized layer (the rest is the layer's geometry and
    bias): its weight integers and scales, and the grid of its input."""

    codes: torch.Tensor  #: int8 weight integers
    scale: torch.Tensor  #: float32 weight scale, one per output channel (or one)
    in_scale: float
    in_zero_point: int  #: on the unsigned 0..255 grid the x86 kernels take


def layer_quants(model: nn.Module) -> dict[str, LayerQuant]:
    """The :class:`LayerQuant` of every fake-quantized layer that can run in the int8 graph."""
    out = {}
    for name, module in model.named_modules():
        if not name or not _graph_layer(module):
            continue
        wq, act = _weight_quant(module), _act_quant(module)
        with torch.no_grad():
            codes = wq.integers(module.weight.detach()).to(torch.int8)
        out[name] = LayerQuant(codes, wq.scale.detach().reshape(-1).float().clone(), float(act.scale),
                               int(act.zero_point) - act.spec.qrange[0])
    return out


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """``"relu"`` / ``"relu6"`` when ``node`` applies one to its single tensor input."""
    if node.op == "call_module":
        m = modules.get(node.target)
        if type(m) in _RELU_MODULES:
            return "relu"
        if type(m) in _RELU6_MODULES:
            return "relu6"
    if node.op == "call_function":
        if node.target in (F.relu, torch.relu):
            return "relu"
        if node.target is F.relu6:
            return "relu6"
        if node.target is F.hardtanh and tuple(node.args[1:3]) == (0.0, 6.0):
            return "relu6"
    if node.op == "call_method" and node.target == "relu":
        return "relu"
    return None


def _full_u8(lo: float, hi: float) -> tuple[float, int]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255.0, 1e-8)
    return float(scale), int(min(max(round(-lo / scale), 0), 255))


def quantize_channels_last(x: torch.Tensor, scale: float, zero_point: int, dtype: torch.dtype) -> torch.Tensor:
    """``torch.quantize_per_tensor`` writing a 4-D tensor channels-last in the same pass.

    The int8 convs (oneDNN and fbgemm) take channels-last tensors and reorder any other one
    first; a graph's input usually comes contiguous (NCHW). Quantizing a permuted view writes
    the channels-last layout directly: measured 3.3-4.7 ms for a 32x3x224x224 batch against
    4.9-5.6 ms for quantizing and then reordering (1 thread); the integers are identical."""
    if x.dim() != 4 or x.is_contiguous(memory_format=torch.channels_last):
        return torch.quantize_per_tensor(x, scale, zero_point, dtype)
    return torch.quantize_per_tensor(x.permute(0, 2, 3, 1), scale, zero_point, dtype).permute(0, 3, 1, 2)


def _qweight(quant: LayerQuant) -> torch.Tensor:
    codes, scale = quant.codes, quant.scale.double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # quantized tensors' deprecation notice
        if scale.numel() == 1:
            return torch._make_per_tensor_quantized_tensor(codes, float(scale), 0)
        return torch._make_per_channel_quantized_tensor(codes, scale, torch.zeros_like(scale, dtype=torch.long), 0)


def _int8_module(module: nn.Module, quant: LayerQuant, relu: bool, scale: float, zp: int) -> nn.Module:
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    bias = None if module.bias is None else module.bias.detach().float().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if isinstance(module, nn.Linear):
            new = (nniq.LinearReLU if relu else nnq.Linear)(module.in_features, module.out_features)
        else:
            if onednn_runs(module.groups):  # one packed weight per input shape: see per_shape.py
                cls = PerShapeConvReLU2d if relu else PerShapeConv2d
            else:
                cls = nniq.ConvReLU2d if relu else nnq.Conv2d
            new = cls(
                module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, module.groups, bias=module.bias is not None)
        new.set_weight_bias(_qweight(quant), bias)
    new.scale, new.zero_point = float(scale), int(zp)
    return new


class ConvAct2d(nn.Module):
    """int8 conv with SiLU or Hardswish fused into oneDNN's kernel (``qconv_pointwise``'s
    ``swish`` / ``hardswish`` post-op), int8 in and out: torch.ao has no such module, and
    without it each of these activations costs a dequantize, a float pass and a quantize.

    The weight is packed once per input shape, with that shape: oneDNN then picks the layout
    for it. Measured at batch 1 on resnet18's 15 conv shapes (1 thread, min of 40 calls): packed
    without a shape 7.00 ms in all, with the shape 6.14 ms (torch.ao's packed convs 6.08 ms),
    e.g. 512-channel 3x3 at 7x7: 0.71 against 0.50 ms; at batch 32 all three are equal."""

    def __init__(self, conv: nn.Conv2d, quant: LayerQuant, act: str, in_qparams: tuple[float, int],
                 out_qparams: tuple[float, int]):
        super().__init__()
        codes = quant.codes
        scale = quant.scale.float().expand(codes.shape[0]).contiguous()
        self.register_buffer("weight", codes)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", torch.zeros(codes.shape[0], dtype=torch.int32), persistent=False)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().float().clone())
        self.geometry = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
        self.act, self.in_qparams, self.out_qparams = act, in_qparams, out_qparams
        self._packed: dict[tuple[int, ...], torch.Tensor] = {}

    def __getstate__(self) -> dict:  # packed oneDNN weights are opaque tensors: a copy packs afresh
        return {**self.__dict__, "_packed": {}}

    def packed(self, shape: tuple[int, ...]) -> torch.Tensor:
        if shape not in self._packed:
            stride, padding, dilation, groups = self.geometry
            if len(self._packed) >= MAX_SHAPES:
                self._packed.pop(next(iter(self._packed)))
            self._packed[shape] = torch.ops.onednn.qconv_prepack(
                self.weight, self.weight_scale, *self.in_qparams, stride, padding, dilation, groups, list(shape))
        return self._packed[shape]

    def forward(self, qx: torch.Tensor) -> torch.Tensor:
        stride, padding, dilation, groups = self.geometry
        (x_scale, x_zp), (o_scale, o_zp) = self.in_qparams, self.out_qparams
        y = torch.ops.onednn.qconv_pointwise(
            qx.int_repr(), x_scale, x_zp, self.packed(tuple(qx.shape)), self.weight_scale, self.weight_zero_point,
            self.bias, stride, padding, dilation, groups, o_scale, o_zp, torch.uint8, self.act, [], "")
        return torch._make_per_tensor_quantized_tensor(y, o_scale, o_zp)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, {self.act} fused, int8 in / int8 out"


def _fusable_act(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """oneDNN's post-op name when ``node`` applies SiLU or Hardswish to its one input."""
    if node.op == "call_module":
        kind = type(modules.get(node.target))
        return {nn.SiLU: "swish", nn.Hardswish: "hardswish"}.get(kind)
    if node.op == "call_function" and not node.kwargs.get("inplace"):
        return {F.silu: "swish", F.hardswish: "hardswish"}.get(node.target)
    return None


class _Builder:
    """Walks the traced graph once, emitting the int8 graph (see the module docstring)."""

    def __init__(self, model: nn.Module, gm: fx.GraphModule, ranges: dict[str, tuple[float, float]],
                 quants: dict[str, LayerQuant]):
        self.model, self.gm, self.ranges = model, gm, ranges
        self.modules = dict(model.named_modules())
        calls: dict[str, int] = {}
        for n in gm.graph.nodes:
            if n.op == "call_module":
                calls[n.target] = calls.get(n.target, 0) + 1
        # a layer called twice keeps one module for both calls: it stays out of the graph
        self.quants = {k: q for k, q in quants.items() if calls.get(k) == 1}
        self.graph = fx.Graph()
        self.env: dict[fx.Node, fx.Node] = {}
        self.isq: dict[fx.Node, bool] = {}
        self.dq: dict[fx.Node, fx.Node] = {}
        self.qin: dict[fx.Node, fx.Node] = {}
        self.qp: dict[fx.Node, tuple[float, int]] = {}  # int8 node -> its (scale, zero-point)
        self.qin_qp: dict[fx.Node, tuple[float, int]] = {}
        self.absorbed: dict[fx.Node, fx.Node] = {}  # fused ReLU / ReLU6 -> its producer
        self.converted: list[tuple[str, nn.Module, str]] = []
        self.float_ops: dict[str, int] = {}

    def layer(self, node: fx.Node) -> nn.Module | None:
        if node.op != "call_module":
            return None
        m = self.modules.get(node.target)
        return m if node.target in self.quants and len(node.args) == 1 and not node.kwargs else None

    def is_add(self, node: fx.Node) -> bool:
        return (node.op == "call_function" and node.target in _ADDS and len(node.args) == 2 and not node.kwargs
                and all(isinstance(a, fx.Node) and a.name in self.ranges for a in node.args))

    def qparams(self, tensor: fx.Node) -> tuple[float, int]:
        """Scale / zero-point of the int8 tensor ``tensor`` (see the module docstring)."""
        for user in tensor.users:
            if self.layer(user) is not None:
                q = self.quants[user.target]
                return q.in_scale, q.in_zero_point
        return _full_u8(*self.ranges[tensor.name])

    def fusable(self, node: fx.Node) -> fx.Node | None:
        """The ReLU / ReLU6 that is ``node``'s only user, if it can be fused into it."""
        if len(node.users) != 1:
            return None
        user = next(iter(node.users))
        kind = _is_relu(user, self.modules)
        if kind is None or user.name not in self.ranges or len(user.args) < 1 or user.args[0] is not node:
            return None
        if kind == "relu6" and not (0.0 <= self.ranges[user.name][0] and self.ranges[user.name][1] <= 6.0):
            return None
        return user

    def as_float(self, node: Any) -> Any:
        if not isinstance(node, fx.Node) or not self.isq.get(node, False):
            return self.env.get(node, node) if isinstance(node, fx.Node) else node
        if node not in self.dq:
            self.dq[node] = self.graph.call_method("dequantize", (self.env[node],))
        return self.dq[node]

    def as_q(self, node: fx.Node, scale: float, zp: int, conv: bool = False) -> fx.Node:
        """``node`` as a quint8 tensor; a float one quantized on ``scale`` / ``zp`` (channels-last
        when ``conv``: what its first reader, a conv, takes)."""
        if self.isq.get(node, False):
            return self.env[node]
        if node not in self.qin:
            quantize = quantize_channels_last if conv else torch.quantize_per_tensor
            self.qin[node] = self.graph.call_function(quantize, (self.env[node], scale, zp, torch.quint8))
            self.qin_qp[node] = (scale, zp)
        return self.qin[node]

    def input_qparams(self, node: fx.Node) -> tuple[float, int] | None:
        return self.qp.get(node) if self.isq.get(node, False) else self.qin_qp.get(node)

    def emit(self, node: fx.Node) -> None:
        if node in self.absorbed:  # fused into its producer: the producer's output stands for it
            producer = self.absorbed[node]
            self.env[node], self.isq[node] = self.env[producer], True
            self.qp[node] = self.qp[producer]
            return
        if node.op == "placeholder" or node.op == "get_attr":
            self.env[node] = self.graph.node_copy(node, lambda n: self.env[n])
            self.isq[node] = False
            return
        if node.op == "output":
            self.graph.output(fx.map_arg(node.args[0], self.as_float))
            return
        layer = self.layer(node)
        if layer is not None and isinstance(layer, nn.Conv2d) and len(node.users) == 1:
            user = next(iter(node.users))
            act = _fusable_act(user, self.modules)
            if act is not None and user.name in self.ranges and _has_onednn_conv():
                q = self.quants[node.target]
                x = self.as_q(node.args[0], q.in_scale, q.in_zero_point, conv=True)
                out = self.qparams(user)
                new = ConvAct2d(layer, q, act, self.input_qparams(node.args[0]), out)
                swap(self.model, node.target, new)
                self.modules[node.target] = new
                self.env[node] = self.graph.call_module(node.target, (x,))
                self.isq[node], self.qp[node] = True, out
                self.absorbed[user] = node
                self.converted.append((node.target, layer, "int8 oneDNN conv + fused " + ("SiLU" if act == "swish" else "Hardswish") + ", int8 in / int8 out"))
                return
        if layer is not None:
            relu = self.fusable(node)
            out = relu or node
            scale, zp = self.qparams(out)
            q = self.quants[node.target]
            x = self.as_q(node.args[0], q.in_scale, q.in_zero_point, conv=isinstance(layer, nn.Conv2d))
            new = _int8_module(layer, q, relu is not None, scale, zp)
            new.train(layer.training)
            swap(self.model, node.target, new)
            self.modules[node.target] = new
            self.env[node] = self.graph.call_module(node.target, (x,))
            self.isq[node], self.qp[node] = True, (scale, zp)
            if relu is not None:
                self.absorbed[relu] = node
            kind = "ReLU6" if relu is not None and _is_relu(relu, self.modules) == "relu6" else "ReLU"
            self.converted.append((node.target, layer, "int8 x86 kernel, int8 in / int8 out"
                                   + (f" + fused {kind}" if relu is not None else "")))
            return
        inputs_q = [a for a in node.all_input_nodes if self.isq.get(a, False)]
        if self.is_add(node) and inputs_q:
            relu = self.fusable(node)
            out = relu or node
            scale, zp = self.qparams(out)
            a, b = (self.as_q(arg, *_full_u8(*self.ranges[arg.name])) for arg in node.args)
            op = torch.ops.quantized.add_relu if relu is not None else torch.ops.quantized.add
            self.env[node] = self.graph.call_function(op, (a, b, scale, zp))
            self.isq[node], self.qp[node] = True, (scale, zp)
            if relu is not None:
                self.absorbed[relu] = node
            return
        if inputs_q and self.hardswish(node) and node.name in self.ranges:
            scale, zp = self.qparams(node)
            self.env[node] = self.graph.call_function(torch.ops.quantized.hardswish,
                                                      (self.env[node.args[0]], scale, zp))
            self.isq[node], self.qp[node] = True, (scale, zp)
            return
        if inputs_q and self.same_qparams(node):
            self.env[node] = self.graph.node_copy(node, lambda n: self.env[n])
            self.isq[node] = node.op != "call_method" or node.target not in ("size", "dim")
            if self.isq[node]:
                self.qp[node] = self.qp.get(inputs_q[0])
            return
        # a float op: dequantize what reaches it
        if inputs_q:
            label = self.label(node)
            self.float_ops[label] = self.float_ops.get(label, 0) + 1
        self.env[node] = self.graph.node_copy(node, self.as_float)
        self.isq[node] = False

    def hardswish(self, node: fx.Node) -> bool:
        if len(node.all_input_nodes) != 1:
            return False
        if node.op == "call_module":
            return type(self.modules.get(node.target)) is nn.Hardswish
        return node.op == "call_function" and node.target is F.hardswish and not node.kwargs.get("inplace")

    def same_qparams(self, node: fx.Node) -> bool:
        if len(node.all_input_nodes) != 1:
            return False
        if node.op == "call_module":
            return type(self.modules.get(node.target)) in _SAME_MODULES
        if node.op == "call_function":
            if node.target is F.hardtanh:
                return True
            return node.target in _SAME_FUNCTIONS
        return node.op == "call_method" and node.target in _SAME_METHODS

    def label(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return type(self.modules[node.target]).__name__
        return getattr(node.target, "__name__", str(node.target))


#: what :func:`build_int8_graph` keeps on the model so :mod:`.graph_saving` can replay it
INPUTS = "_pj_int8_graph_inputs"


def build_int8_graph(model: nn.Module, report: Report, quants: dict[str, LayerQuant] | None = None,
                     ranges: dict[str, tuple[float, float]] | None = None) -> str | None:
    """Rewrite ``model`` (in place) so its int8 layers exchange int8 tensors; record each
    layer in ``report``. Returns None when done, else why there is no graph to rewrite
    (nothing changed then). ``quants`` / ``ranges`` default to the model's calibrated
    quantizers and graph ranges; :mod:`.graph_saving` passes stored ones to rebuild the same
    graph on a fresh float model."""
    if ranges is None:
        ranges_module = graph_ranges(model)
        if ranges_module is None:
            return ("no graph was calibrated (static PTQ on a model torch.fx traces records one; QAT, "
                    "dynamic or weight-only activations, or an untraceable model do not)")
        ranges = ranges_module.ranges
    gm = trace(model)
    if gm is None:
        return "torch.fx cannot trace this model"
    _skip_identities(gm)
    builder = _Builder(model, gm, ranges, layer_quants(model) if quants is None else quants)
    if not any(builder.layer(n) is not None for n in gm.graph.nodes):
        return "no layer has 8-bit static inputs and symmetric per-channel 8-bit weights"
    nodes = [n.name for n in gm.graph.nodes]
    for node in gm.graph.nodes:
        builder.emit(node)
    builder.graph.lint()
    int8 = fx.GraphModule(model, builder.graph, class_name=f"Int8{type(model).__name__}")
    object.__setattr__(model, "_pj_int8_graph", int8)  # not a child: its modules are the model's
    model.forward = int8.forward  # the instance's forward; the class (and its state_dict) stay
    taken = {name for name, _, _ in builder.converted}
    model.__dict__[INPUTS] = {"quants": {k: q for k, q in builder.quants.items() if k in taken},
                              "ranges": dict(ranges), "nodes": nodes}
    for name, layer, after in builder.converted:
        report.touch(name, layer, "fake-quantized", after)
    floats = ", ".join(f"{k} x{v}" for k, v in sorted(builder.float_ops.items()))
    report.note("int8 tensors flow between layers" + (f"; float around: {floats}" if floats else ""))
    return None


def _skip_identities(gm: fx.GraphModule) -> None:
    """Drop ``nn.Identity`` calls (folded BatchNorms, eval-mode stochastic depth...) so a
    conv -> (folded BN) -> ReLU chain fuses."""
    for node in list(gm.graph.nodes):
        identity = (node.op == "call_module" and type(gm.get_submodule(node.target)) is nn.Identity
                    and len(node.args) == 1 and not node.kwargs)
        # torchvision's stochastic depth, traced in eval mode: training=False makes it x -> x
        depth = (node.op == "call_function" and getattr(node.target, "__name__", "") == "stochastic_depth"
                 and (node.kwargs.get("training", node.args[3] if len(node.args) > 3 else True) is False))
        if (identity or depth) and node.args and isinstance(node.args[0], fx.Node):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)


def int8_graph(model: nn.Module) -> fx.GraphModule | None:
    """The int8 graph :func:`build_int8_graph` installed on ``model``, if any."""
    return model.__dict__.get("_pj_int8_graph")
