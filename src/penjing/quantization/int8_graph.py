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
* in ``u8`` mode (:func:`u8_mode`: a VNNI CPU where the x86 engine runs every conv of the
  model on oneDNN, as on resnets) convs run oneDNN's kernel directly (:class:`OnednnConv2d`)
  on plain uint8 tensors, and a residual sum (+ ReLU) runs inside the conv that computes its
  second input, reading the first where nothing reads it afterwards; a conv that feeds a
  max pool (whose uint8 kernel is slow) or a float op stays a torch.ao module; quint8 and
  uint8 tensors turn into each other as views of the same memory (:mod:`.u8_views`);
* convs that the x86 engine packs for oneDNN keep one packed weight per input shape
  (:mod:`.per_shape`);
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
from penjing.quantization.u8_views import quint8_view, uint8_view

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
    """``torch.quantize_per_tensor`` giving a 4-D tensor channels-last.

    The int8 convs (oneDNN and fbgemm) take channels-last tensors and reorder any other one
    first; a graph's input usually comes contiguous (NCHW). Reordering the one-byte integers
    after quantizing moves a quarter of the bytes that reordering the float input does:
    measured for a 32x3x224x224 batch (1 thread, torch 2.14.1, 41 interleaved rounds) 3.5 ms
    against 4.9 ms (median of the per-round ratios 1.12), at batch 1 0.084 / 0.089 ms; the
    integers are identical."""
    if x.dim() != 4 or x.is_contiguous(memory_format=torch.channels_last):
        return torch.quantize_per_tensor(x, scale, zero_point, dtype)
    return torch.quantize_per_tensor(x, scale, zero_point, dtype).contiguous(memory_format=torch.channels_last)


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


class OnednnConv2d(nn.Module):
    """int8 conv on oneDNN's kernel (``onednn::qconv_pointwise``) with its activation fused
    (``act``: ``none``, ``relu``, ``swish`` = SiLU, ``hardswish``) and, with ``accum_qparams``,
    a residual sum (+ ReLU) fused as well (``qconv2d_pointwise.binary``'s ``sum`` post-op: the
    conv adds the int8 ``accum`` tensor into its result as it writes it).

    With ``quantized_io`` it takes and gives ``quint8`` tensors, read and written as uint8 views
    of the same memory (:mod:`.u8_views`; torch.ao has no module for conv + SiLU / Hardswish,
    and without one each activation costs a dequantize, a float pass and a quantize). Without,
    it takes and gives plain ``uint8`` tensors whose scale and zero-point the graph knows
    statically (:class:`_Builder`'s ``u8`` mode).

    The weight is packed once per input shape, with that shape: oneDNN then picks the layout
    for it. Measured at batch 1 on resnet18's 15 conv shapes (1 thread, min of 40 calls): packed
    without a shape 7.00 ms in all, with the shape 6.14 ms (torch.ao's packed convs 6.08 ms),
    e.g. 512-channel 3x3 at 7x7: 0.71 against 0.50 ms; at batch 32 all three are equal."""

    def __init__(self, conv: nn.Conv2d, quant: LayerQuant, act: str, in_qparams: tuple[float, int],
                 out_qparams: tuple[float, int], accum_qparams: tuple[float, int] | None = None,
                 sum_act: str = "none", quantized_io: bool = True):
        super().__init__()
        codes = quant.codes
        scale = quant.scale.float().expand(codes.shape[0]).contiguous()
        self.register_buffer("weight", codes)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("weight_zero_point", torch.zeros(codes.shape[0], dtype=torch.int32), persistent=False)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().float().clone())
        self.geometry = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
        self.act, self.in_qparams, self.out_qparams = act, in_qparams, out_qparams
        self.accum_qparams, self.sum_act, self.quantized_io = accum_qparams, sum_act, quantized_io
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

    def forward(self, x: torch.Tensor, accum: torch.Tensor | None = None) -> torch.Tensor:
        stride, padding, dilation, groups = self.geometry
        (x_scale, x_zp), (o_scale, o_zp) = self.in_qparams, self.out_qparams
        u = uint8_view(x) if self.quantized_io else x
        packed = self.packed(tuple(u.shape))
        if self.accum_qparams is None:
            y = torch.ops.onednn.qconv_pointwise(
                u, x_scale, x_zp, packed, self.weight_scale, self.weight_zero_point, self.bias, stride,
                padding, dilation, groups, o_scale, o_zp, torch.uint8, self.act, [], "")
        else:
            a_scale, a_zp = self.accum_qparams
            y = torch.ops.onednn.qconv2d_pointwise.binary(
                u, x_scale, x_zp, packed, self.weight_scale, self.weight_zero_point, accum, self.bias,
                stride, padding, dilation, groups, o_scale, o_zp, torch.uint8, a_scale, a_zp, "sum", 1.0,
                self.sum_act, [], "")
        return quint8_view(y, o_scale, o_zp) if self.quantized_io else y

    def extra_repr(self) -> str:
        fused = "" if self.act == "none" else f", {self.act} fused"
        if self.accum_qparams is not None:
            fused += ", residual sum" + (f" + {self.sum_act}" if self.sum_act != "none" else "") + " fused"
        io = "quint8" if self.quantized_io else "uint8"
        return f"{tuple(self.weight.shape)}{fused}, {io} in / {io} out"


def _fusable_act(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """oneDNN's post-op name when ``node`` applies SiLU or Hardswish to its one input."""
    if node.op == "call_module":
        kind = type(modules.get(node.target))
        return {nn.SiLU: "swish", nn.Hardswish: "hardswish"}.get(kind)
    if node.op == "call_function" and not node.kwargs.get("inplace"):
        return {F.silu: "swish", F.hardswish: "hardswish"}.get(node.target)
    return None


#: ops that give a plain uint8 tensor unchanged in meaning (same scale / zero-point): ReLU and
#: the average pools do not (a quantized ReLU clamps at the zero-point; means need the grid),
#: nor max pooling in practice (torch 2.14's uint8 max_pool2d fails on channels-last tensors and
#: takes 199 ms where the quint8 kernel takes 6, measured at 32x64x112x112)
_U8_SAME_MODULES = (nn.Flatten, nn.Identity, nn.Dropout)
_U8_SAME_FUNCTIONS = {torch.flatten, F.dropout, operator.getitem}
_U8_SAME_METHODS = {"flatten", "view", "reshape", "contiguous", "size", "dim"}
def u8_mode(quants: dict[str, LayerQuant], modules: dict[str, nn.Module]) -> bool:
    """Run the graph's convs on oneDNN with plain uint8 tensors between them, residual sums
    fused into the convs? Where the x86 engine runs every int8 conv of the model on oneDNN
    anyway (VNNI, at most 100 groups: :func:`~.per_shape.onednn_runs`), so no conv needs a
    quint8 copy of its input. The fused sum measured (resnet50's 1x1 conv + residual shapes,
    batch 32, 1 thread): 13.3 ms against 17.0 ms for ``quantized::conv2d`` + ``add_relu`` at
    56x56x256, 10.3 / 12.5 at 28x28x512, 9.5 / 10.3 at 14x14x1024, equal at 7x7x2048."""
    convs = [modules[name] for name in quants if isinstance(modules.get(name), nn.Conv2d)]
    return bool(convs) and _has_onednn_conv() and all(onednn_runs(conv.groups) for conv in convs)


def _allocates(new: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Does the emitted node ``new`` give its tensor in memory of its own, never its input's?"""
    import torch.ao.nn.quantized as nnq

    if new.op == "call_module":
        return isinstance(modules.get(new.target), (OnednnConv2d, nnq.Conv2d, nnq.Linear, nn.MaxPool2d))
    allocating = (torch.quantize_per_tensor, quantize_channels_last, torch.ops.quantized.add,
                  torch.ops.quantized.add_relu, torch.ops.quantized.hardswish, F.max_pool2d)
    return new.op == "call_function" and any(new.target is f for f in allocating)


class _Builder:
    """Walks the traced graph once, emitting the int8 graph (see the module docstring).

    Each emitted tensor is of one kind: ``f`` float, ``q`` a ``quint8`` tensor, ``u`` a plain
    ``uint8`` tensor (oneDNN's convs in ``u8`` mode) whose scale / zero-point live in ``qp``."""

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
        self.u8 = u8_mode(self.quants, self.modules)
        self.graph = fx.Graph()
        self.env: dict[fx.Node, fx.Node] = {}
        self.kind: dict[fx.Node, str] = {}
        self.cast: dict[tuple[fx.Node, str], fx.Node] = {}  # (node, kind) -> its converted copy
        self.qp: dict[fx.Node, tuple[float, int]] = {}  # int8 node -> its (scale, zero-point)
        self.qin_qp: dict[fx.Node, tuple[float, int]] = {}  # float node -> the grid it was quantized on
        self.absorbed: dict[fx.Node, fx.Node] = {}  # fused ReLU / ReLU6 / sum -> its producer
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

    def quantized(self, node: Any) -> bool:
        return isinstance(node, fx.Node) and self.kind.get(node, "f") != "f"

    def converted_copy(self, node: fx.Node, kind: str, make) -> fx.Node:
        if (node, kind) not in self.cast:
            self.cast[(node, kind)] = make()
        return self.cast[(node, kind)]

    def as_float(self, node: Any) -> Any:
        if not isinstance(node, fx.Node):
            return node
        if not self.quantized(node):
            return self.env.get(node, node)
        q = self.as_q(node, *self.qp[node])
        return self.converted_copy(node, "f", lambda: self.graph.call_method("dequantize", (q,)))

    def as_q(self, node: fx.Node, scale: float, zp: int, conv: bool = False) -> fx.Node:
        """``node`` as a quint8 tensor; a float one quantized on ``scale`` / ``zp`` (channels-last
        when ``conv``: what its first reader, a conv, takes)."""
        kind = self.kind.get(node, "f")
        if kind == "q":
            return self.env[node]
        if kind == "u":
            return self.converted_copy(node, "q", lambda: self.graph.call_function(
                quint8_view, (self.env[node], *self.qp[node])))
        self.qin_qp.setdefault(node, (scale, zp))
        quantize = quantize_channels_last if conv else torch.quantize_per_tensor
        return self.converted_copy(node, "q", lambda: self.graph.call_function(
            quantize, (self.env[node], scale, zp, torch.quint8)))

    def as_u8(self, node: fx.Node, scale: float, zp: int) -> fx.Node:
        """``node`` as a plain uint8 tensor (a float one quantized on ``scale`` / ``zp``)."""
        if self.kind.get(node, "f") == "u":
            return self.env[node]
        q = self.as_q(node, scale, zp, conv=True)
        return self.converted_copy(node, "u", lambda: self.graph.call_function(uint8_view, (q,)))

    def input_qparams(self, node: fx.Node) -> tuple[float, int] | None:
        return self.qp.get(node) if self.quantized(node) else self.qin_qp.get(node)

    def set(self, node: fx.Node, new: fx.Node, kind: str, qparams: tuple[float, int] | None = None) -> None:
        self.env[node], self.kind[node] = new, kind
        if qparams is not None:
            self.qp[node] = qparams

    def accum_for(self, conv: fx.Node) -> tuple[fx.Node, fx.Node] | None:
        """``(sum, other input)`` when ``conv``'s only use is a residual sum whose other input
        can take the sum in place: a uint8 tensor already computed, fresh from a oneDNN conv (or
        a pool of one), which nothing reads after this conv."""
        if not self.u8 or len(conv.users) != 1:
            return None
        add = next(iter(conv.users))
        if not self.is_add(add) or add.args[0] is add.args[1]:
            return None
        other = add.args[1] if add.args[0] is conv else add.args[0]
        kind = self.kind.get(other)
        if kind is None:
            return None  # not computed yet: the other input's conv takes the sum
        buffer = self.env[other]
        # a oneDNN conv's uint8 output, or a quint8 tensor (the sum goes into a uint8 view of
        # it, or of a copy of it where it may be a view of another tensor: accum_input)
        fresh = kind == "q" or (kind == "u" and buffer.op == "call_module"
                                and isinstance(self.modules.get(buffer.target), OnednnConv2d))
        if not fresh:
            return None
        sharing = [n for n, new in self.env.items() if new is buffer]  # the tensor and what was fused into it
        for n in sharing:
            for user in n.users:
                if user is add or user in sharing:
                    continue
                if user not in self.env or self.layer(user) is None:
                    return None  # read later, or by an op that could keep a view of it
        return add, other

    def accum_input(self, other: fx.Node) -> fx.Node:
        """The uint8 tensor a fused sum is written into (:meth:`accum_for`'s ``other``): a view of
        ``other``'s own memory where its op gave it fresh memory, else a copy (a dropout, a
        reshape... may hand on the very tensor another op reads)."""
        u = self.as_u8(other, *self.qp[other])
        new = self.env[other]
        if self.kind[other] == "u" or _allocates(new, self.modules):
            return u
        return self.graph.call_method("clone", (u,))

    def emit(self, node: fx.Node) -> None:
        if node in self.absorbed:  # fused into its producer: the producer's output stands for it
            producer = self.absorbed[node]
            self.set(node, self.env[producer], self.kind[producer], self.qp[producer])
            return
        if node.op == "placeholder" or node.op == "get_attr":
            self.set(node, self.graph.node_copy(node, lambda n: self.env[n]), "f")
            return
        if node.op == "output":
            self.graph.output(fx.map_arg(node.args[0], self.as_float))
            return
        layer = self.layer(node)
        if layer is not None and isinstance(layer, nn.Conv2d) and self.u8 and self.onednn_conv(node, layer):
            return
        if layer is not None and isinstance(layer, nn.Conv2d) and len(node.users) == 1:
            user = next(iter(node.users))
            act = _fusable_act(user, self.modules)
            if act is not None and user.name in self.ranges and _has_onednn_conv():
                q = self.quants[node.target]
                x = self.as_q(node.args[0], q.in_scale, q.in_zero_point, conv=True)
                out = self.qparams(user)
                new = OnednnConv2d(layer, q, act, self.input_qparams(node.args[0]), out)
                self.install(node, layer, new, (x,), "q", out, user,
                             "int8 oneDNN conv + fused " + ("SiLU" if act == "swish" else "Hardswish")
                             + ", int8 in / int8 out")
                return
        if layer is not None:
            relu = self.fusable(node)
            scale, zp = self.qparams(relu or node)
            q = self.quants[node.target]
            x = self.as_q(node.args[0], q.in_scale, q.in_zero_point, conv=isinstance(layer, nn.Conv2d))
            new = _int8_module(layer, q, relu is not None, scale, zp)
            kind = "ReLU6" if relu is not None and _is_relu(relu, self.modules) == "relu6" else "ReLU"
            self.install(node, layer, new, (x,), "q", (scale, zp), relu,
                         "int8 x86 kernel, int8 in / int8 out" + (f" + fused {kind}" if relu is not None else ""))
            return
        inputs_q = [a for a in node.all_input_nodes if self.quantized(a)]
        if self.is_add(node) and inputs_q:
            relu = self.fusable(node)
            scale, zp = self.qparams(relu or node)
            a, b = (self.as_q(arg, *_full_u8(*self.ranges[arg.name])) for arg in node.args)
            op = torch.ops.quantized.add_relu if relu is not None else torch.ops.quantized.add
            self.set(node, self.graph.call_function(op, (a, b, scale, zp)), "q", (scale, zp))
            if relu is not None:
                self.absorbed[relu] = node
            return
        if inputs_q and self.hardswish(node) and node.name in self.ranges:
            scale, zp = self.qparams(node)
            x = self.as_q(node.args[0], *self.qp[node.args[0]])
            self.set(node, self.graph.call_function(torch.ops.quantized.hardswish, (x, scale, zp)), "q", (scale, zp))
            return
        if inputs_q and self.same_qparams(node):
            source = inputs_q[0]
            kind = "u" if self.kind[source] == "u" and self.u8_same(node) else "q"
            value = self.env[source] if kind == "u" else self.as_q(source, *self.qp[source])
            new = self.graph.node_copy(node, lambda n: value if n is source else self.env[n])
            reads_shape = node.op == "call_method" and node.target in ("size", "dim")
            self.set(node, new, "f" if reads_shape else kind, None if reads_shape else self.qp[source])
            return
        # a float op: dequantize what reaches it
        if inputs_q:
            label = self.label(node)
            self.float_ops[label] = self.float_ops.get(label, 0) + 1
        self.set(node, self.graph.node_copy(node, self.as_float), "f")

    def onednn_conv(self, node: fx.Node, layer: nn.Conv2d) -> bool:
        """``u8`` mode: the conv on oneDNN, uint8 in and out, with what follows fused into it.
        False (nothing emitted) when what reads its output needs a quint8 tensor: the quint8
        kernel then writes one directly instead of a copy being made."""
        user = next(iter(node.users)) if len(node.users) == 1 else None
        act = _fusable_act(user, self.modules) if user is not None and user.name in self.ranges else None
        relu = self.fusable(node)
        accum = None if act or relu else self.accum_for(node)
        fused = relu or (user if act else None)
        if accum is None and not self.reads_u8(fused or node):
            return False
        q = self.quants[node.target]
        x = self.as_u8(node.args[0], q.in_scale, q.in_zero_point)
        in_qp = self.input_qparams(node.args[0])
        if accum is not None:
            add, other = accum
            sum_relu = self.fusable(add)
            out = self.qparams(sum_relu or add)
            new = OnednnConv2d(layer, q, "none", in_qp, out, self.qp[other], "relu" if sum_relu else "none",
                               quantized_io=False)
            self.install(node, layer, new, (x, self.accum_input(other)), "u", out, add,
                         "int8 oneDNN conv + fused residual sum" + (" + ReLU" if sum_relu else "")
                         + ", uint8 in / uint8 out")
            if sum_relu is not None:
                self.absorbed[sum_relu] = node
            return True
        out = self.qparams(fused or node)
        name = {"swish": "SiLU", "hardswish": "Hardswish"}.get(act or "", "ReLU6" if relu is not None and
                                                               _is_relu(relu, self.modules) == "relu6" else "ReLU")
        new = OnednnConv2d(layer, q, act or ("relu" if relu is not None else "none"), in_qp, out, quantized_io=False)
        self.install(node, layer, new, (x,), "u", out, fused,
                     "int8 oneDNN conv" + (f" + fused {name}" if fused is not None else "") + ", uint8 in / uint8 out")
        return True

    def reads_u8(self, tensor: fx.Node) -> bool:
        """Does everything that reads ``tensor`` take it as a uint8 tensor (convs, sums, views)?"""
        return all((self.layer(user) is not None and isinstance(self.modules[user.target], nn.Conv2d))
                   or self.is_add(user) or self.u8_same(user) for user in tensor.users)

    def install(self, node: fx.Node, layer: nn.Module, new: nn.Module, args: tuple, kind: str,
                out: tuple[float, int], fused: fx.Node | None, after: str) -> None:
        """Put ``new`` in ``layer``'s place and call it; ``fused`` (its activation or sum) is
        absorbed into it."""
        new.train(layer.training)
        swap(self.model, node.target, new)
        self.modules[node.target] = new
        self.set(node, self.graph.call_module(node.target, args), kind, out)
        if fused is not None:
            self.absorbed[fused] = node
        self.converted.append((node.target, layer, after))

    def u8_same(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return type(self.modules.get(node.target)) in _U8_SAME_MODULES
        if node.op == "call_function":
            return node.target in _U8_SAME_FUNCTIONS
        return node.op == "call_method" and node.target in _U8_SAME_METHODS

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
