"""Export stand-ins for the int8 layers without calibrated input scales.

* **dynamic** :class:`~penjing.quantization.Int8Linear` (``activations="dynamic"``): each row
  of the input gets its own scale at run time, ``s = max|x_row| / 127``. ONNX's
  ``DynamicQuantizeLinear`` has one scale per tensor (uint8), which would change the numbers
  and make each sample depend on its batch, so the layer is written out with plain ONNX ops
  that compute exactly what penjing computes::

      s   = Max(ReduceMax(Abs(x), axes=-1, keepdims) / 127, 1e-8)
      q   = Cast<uint8>(Clip(Round(x / s), -127, 127) + 128)
      acc = MatMulInteger(q, W_int8^T, a_zero_point=128)  # int32, ONNX Runtime's u8s8 GEMM
      y   = Cast<float>(acc) * w_scale * s + b

  The layer is a custom op (``penjing::int8_dynamic_linear``) that the dynamo exporter
  translates with :func:`_dynamic_linear_onnx`; the TorchScript exporter cannot, so these
  layers need ``exporter="dynamo"`` or ``"auto"``.
* **weight-only** int8 Linear / Conv2d (``activations="none"``): ``DequantizeLinear`` of the
  int8 weight (one scale per output channel) feeding a float ``MatMul`` / ``Conv``: the file
  stores the weights in one byte, the arithmetic is float, as in penjing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from penjing.export.qdq import _decomposed


@torch.library.custom_op("penjing::int8_dynamic_linear", mutates_args=())
def int8_dynamic_linear(x: torch.Tensor, weight_t: torch.Tensor, weight_scale: torch.Tensor,
                        bias: torch.Tensor) -> torch.Tensor:
    """Per-row dynamic int8 linear: ``weight_t`` is the int8 weight transposed (in, out)."""
    s = torch.clamp(x.abs().amax(-1, keepdim=True) / 127, min=1e-8)
    q = torch.clamp(torch.round(x / s), -127, 127)
    acc = (q.double() @ weight_t.double()).float()  # exact: |sums| < 2^53
    return acc * weight_scale * s + bias


@int8_dynamic_linear.register_fake
def _(x, weight_t, weight_scale, bias):
    return x.new_empty(*x.shape[:-1], weight_t.shape[1])


def _dynamic_linear_onnx(x, weight_t, weight_scale, bias):
    """The ONNX ops for :func:`int8_dynamic_linear` (an onnxscript translation)."""
    from onnx import TensorProto
    from onnx.helper import make_tensor
    from onnxscript import opset18 as op

    row_max = op.ReduceMax(op.Abs(x), op.Constant(value_ints=[-1]), keepdims=1)
    s = op.Max(op.Div(row_max, op.Constant(value_float=127.0)), op.Constant(value_float=1e-8))
    q = op.Clip(op.Round(op.Div(x, s)), op.Constant(value_float=-127.0), op.Constant(value_float=127.0))
    # as uint8 with zero point 128 (the same integers): ONNX Runtime's u8 x s8 MatMulInteger
    # is its fast kernel; s8 x s8 measured 28x slower (128x256 @ 256x1024: 4.50 vs 0.16 ms)
    q_u8 = op.Cast(op.Add(q, op.Constant(value_float=128.0)), to=TensorProto.UINT8)
    zero = op.Constant(value=make_tensor("a_zero_point", TensorProto.UINT8, [], [128]))
    acc = op.Cast(op.MatMulInteger(q_u8, weight_t, zero), to=TensorProto.FLOAT)
    return op.Add(op.Mul(op.Mul(acc, weight_scale), s), bias)


#: for ``torch.onnx.export(dynamo=True, custom_translation_table=...)``
TRANSLATIONS = {torch.ops.penjing.int8_dynamic_linear.default: _dynamic_linear_onnx}


def _symmetric_weight(layer: nn.Module, name: str) -> torch.Tensor:
    view = [-1] + [1] * (layer.weight_int8.dim() - 1)  # ``weight`` is the layer's float view
    w_int = layer.weight_int8.float() - layer.weight_zero_point.float().reshape(view)
    if int(w_int.abs().max()) > 127:
        raise ValueError(f"layer {name!r}: asymmetric weights reach beyond the int8 grid; "
                         "ONNX export takes symmetric int8 weights")
    return w_int.to(torch.int8)


class DynamicInt8Linear(nn.Module):
    """A dynamic (per-row input) :class:`~penjing.quantization.Int8Linear`, exportable."""

    dynamo_only = True

    def __init__(self, layer: nn.Module, name: str):
        super().__init__()
        self.register_buffer("weight_t", _symmetric_weight(layer, name).t().contiguous())
        self.register_buffer("weight_scale", layer.weight_scale.float().clone())
        bias = layer.bias if layer.bias is not None else torch.zeros(layer.weight_int8.shape[0])
        self.register_buffer("bias", bias.float().clone())
        smooth = getattr(layer, "smooth", None)
        self.register_buffer("smooth", None if smooth is None else smooth.float().clone())
        self.fused_relu = bool(layer.fused_relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.smooth is not None:
            x = x * self.smooth  # SmoothQuant's 1 / s, migrated into the weight
        y = torch.ops.penjing.int8_dynamic_linear(x, self.weight_t, self.weight_scale, self.bias)
        return torch.relu(y) if self.fused_relu else y


class _WeightOnly(nn.Module):
    """Int8 weight with per-output-channel scales, dequantized in the graph; float compute."""

    style = "fake_quant"  # set by the exporter: "decomposed" under dynamo (see qdq._QDQBase)

    def __init__(self, layer: nn.Module, name: str):
        super().__init__()
        w_int = _symmetric_weight(layer, name)
        view = [-1] + [1] * (w_int.dim() - 1)
        self.register_buffer("weight_int8", w_int)
        self.register_buffer("weight", w_int.float() * layer.weight_scale.float().reshape(view))
        self.register_buffer("weight_scale", layer.weight_scale.float().clone())
        self.register_buffer("weight_zero_point", torch.zeros(w_int.shape[0], dtype=torch.int32))
        self.register_buffer("bias", None if layer.bias is None else layer.bias.float().clone())
        self.fused_relu = bool(layer.fused_relu)

    def _weight(self) -> torch.Tensor:
        if self.style == "decomposed":  # the int8 weight itself is the graph's initializer
            return _decomposed().dequantize_per_channel(
                self.weight_int8, self.weight_scale, self.weight_zero_point.long(), 0, -128, 127, torch.int8)
        return torch.fake_quantize_per_channel_affine(self.weight, self.weight_scale, self.weight_zero_point,
                                                      0, -128, 127)


class WeightOnlyLinear(_WeightOnly):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x.float(), self._weight(), self.bias)
        return torch.relu(y) if self.fused_relu else y


class WeightOnlyConv2d(_WeightOnly):
    def __init__(self, layer: nn.Module, name: str):
        super().__init__(layer, name)
        self.stride, self.dilation, self.groups = tuple(layer.stride), tuple(layer.dilation), layer.groups
        self.padding = getattr(layer, "padding_arg", tuple(layer.padding))
        self.padding_mode, self.pad = getattr(layer, "padding_mode", "zeros"), tuple(layer.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, padding = x.float(), self.padding
        if self.padding_mode != "zeros":  # as the int8 layer does: pad first, then a valid conv
            x = F.pad(x, [p for p in reversed(self.pad) for _ in range(2)], mode=self.padding_mode)
            padding = 0
        y = F.conv2d(x, self._weight(), self.bias, self.stride, padding, self.dilation, self.groups)
        return torch.relu(y) if self.fused_relu else y
