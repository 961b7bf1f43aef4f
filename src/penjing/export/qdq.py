"""Export-friendly stand-ins for penjing's int8 layers: the same integers as a QDQ graph.

:class:`~penjing.quantization.Int8Linear` / :class:`~penjing.quantization.Int8Conv2d` run
vendor int8 kernels that ONNX cannot see into. :class:`QDQLinear` / :class:`QDQConv2d` compute
the same thing with ``torch.fake_quantize_per_tensor_affine`` on the input and
``torch.fake_quantize_per_channel_affine`` on the weight, which both ONNX exporters write as
``QuantizeLinear -> DequantizeLinear`` pairs (per-channel weight scales on axis 0). ONNX
Runtime then fuses ``DQ -> Conv/MatMul -> Q`` groups into its integer kernels (QLinearConv,
QGemm, MatMulIntegerToFloat...).

ONNX's QuantizeLinear knows only full 8-bit grids (``0..255``, ``-128..127``) and ``0..127``;
penjing's grids can be narrower (the restricted symmetric ``-127..127``, the 7-bit weights of
``weight_reduce_range``). The weight is stored already on its grid, so the enclosing int8 grid
reproduces it exactly; an input grid ONNX lacks is clamped to its float range first, which
gives the same integers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: The (qmin, qmax) pairs torch.onnx writes as QuantizeLinear (uint8 or int8 outputs).
ONNX_GRIDS = ((0, 255), (-128, 127), (0, 127))


def onnx_grid(qmin: int, qmax: int) -> tuple[int, int] | None:
    """The ONNX grid that contains ``qmin..qmax`` (None when none does: more than 8 bits)."""
    if (qmin, qmax) in ONNX_GRIDS:
        return qmin, qmax
    if qmin >= 0 and qmax <= 255:
        return (0, 127) if qmax <= 127 else (0, 255)
    if qmin >= -128 and qmax <= 127:
        return -128, 127
    return None


def _decomposed():
    """PyTorch 2's quantize/dequantize ops (``quantized_decomposed``), registered on import."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401

    return torch.ops.quantized_decomposed


class _QDQBase(nn.Module):
    """Input qparams, dequantized weight on its grid, per-channel scales, bias.

    ``style`` picks the ops: "decomposed" (``quantized_decomposed`` quantize/dequantize, which
    the dynamo exporter writes as QDQ with the int8 weight as initializer, and which trace
    with a free batch dimension) or "fake_quant" (``torch.fake_quantize_*``, the ops the
    TorchScript exporter knows). Both compute the same values.
    """

    style = "fake_quant"

    def __init__(self, layer: nn.Module, name: str):
        super().__init__()
        if not layer.static:
            raise ValueError(
                f"layer {name!r} ({type(layer).__name__}) quantizes its input per batch (dynamic, "
                "weight-only int8); ONNX export needs calibrated input scales: quantize with act_bits=8")
        grid = onnx_grid(layer.in_qmin, layer.in_qmax)
        if grid is None:
            raise ValueError(f"layer {name!r}: input grid {layer.in_qmin}..{layer.in_qmax} has no "
                             "8-bit ONNX QuantizeLinear form")
        self.grid = grid
        self.clamp = grid != (layer.in_qmin, layer.in_qmax)
        scale, zp = float(layer.input_scale), int(layer.input_zero_point)
        self.in_scale, self.in_zero_point = scale, zp
        self.in_lo, self.in_hi = (layer.in_qmin - zp) * scale, (layer.in_qmax - zp) * scale
        view = [-1] + [1] * (layer.weight_int8.dim() - 1)
        w_int = layer.weight_int8.float() - layer.weight_zero_point.float().reshape(view)
        if int(w_int.abs().max()) > 127:
            raise ValueError(f"layer {name!r}: asymmetric weights reach beyond the int8 grid; "
                             "ONNX export takes symmetric int8 weights")
        self.register_buffer("weight", w_int * layer.weight_scale.float().reshape(view))
        self.register_buffer("weight_int8", w_int.to(torch.int8))
        self.register_buffer("weight_scale", layer.weight_scale.float().clone())
        self.register_buffer("weight_zero_point", torch.zeros(layer.weight_int8.shape[0], dtype=torch.int32))
        self.register_buffer("bias", None if layer.bias is None else layer.bias.float().clone())
        self.fused_relu = bool(layer.fused_relu)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            x = x.float()
        if self.clamp:
            x = x.clamp(self.in_lo, self.in_hi)
        if self.style == "decomposed":
            dtype = torch.uint8 if self.grid[0] >= 0 else torch.int8
            q = _decomposed().quantize_per_tensor(x, self.in_scale, self.in_zero_point, *self.grid, dtype)
            return _decomposed().dequantize_per_tensor(q, self.in_scale, self.in_zero_point, *self.grid, dtype)
        return torch.fake_quantize_per_tensor_affine(x, self.in_scale, self.in_zero_point, *self.grid)

    def _weight(self) -> torch.Tensor:
        if self.style == "decomposed":  # the int8 weight itself is the graph's initializer
            return _decomposed().dequantize_per_channel(
                self.weight_int8, self.weight_scale, self.weight_zero_point.long(), 0, -128, 127, torch.int8)
        return torch.fake_quantize_per_channel_affine(self.weight, self.weight_scale,
                                                      self.weight_zero_point, 0, -128, 127)

    #: (scale, zero_point) of the output on a uint8 grid, set by :func:`calibrate_outputs`
    out_qparams: tuple[float, int] | None = None

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        y = torch.relu(y) if self.fused_relu else y
        if self.out_qparams is None:
            return y
        scale, zp = self.out_qparams
        if self.style == "decomposed":
            q = _decomposed().quantize_per_tensor(y, scale, zp, 0, 255, torch.uint8)
            return _decomposed().dequantize_per_tensor(q, scale, zp, 0, 255, torch.uint8)
        return torch.fake_quantize_per_tensor_affine(y, scale, zp, 0, 255)


def calibrate_outputs(model: nn.Module, args: tuple) -> int:
    """Give every QDQ layer of ``model`` an 8-bit output quantizer whose range is what the
    layer produces on ``args`` (min/max, widened to contain 0); returns how many.

    ONNX Runtime fuses ``DQ -> Conv -> Q`` into QLinearConv only when the conv's output is
    quantized; penjing's int8 layers return float (the next layer quantizes), so a conv that
    feeds an Add (a residual) or the network's output would otherwise run as a float conv on
    weights dequantized at every call. The price is one more 8-bit rounding of those outputs.
    """
    from penjing.quantization.core import QuantSpec, qparams

    layers = [m for m in model.modules() if isinstance(m, _QDQBase)]
    ranges: dict[int, list[float]] = {}

    def hook(module, _inputs, output):
        lo, hi = float(output.min()), float(output.max())
        seen = ranges.setdefault(id(module), [lo, hi])
        seen[0], seen[1] = min(seen[0], lo), max(seen[1], hi)

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.no_grad():
            for m in layers:
                m.out_qparams = None
            model(*args)
    finally:
        for h in handles:
            h.remove()
    spec = QuantSpec(bits=8, symmetric=False, signed=False)
    for m in layers:
        if id(m) in ranges:
            lo, hi = ranges[id(m)]
            scale, zp = qparams(torch.tensor(lo), torch.tensor(hi), spec)
            m.out_qparams = (float(scale), int(zp))
    return len(ranges)


class QDQLinear(_QDQBase):
    """An :class:`~penjing.quantization.Int8Linear` as fake-quant ops (exported as QDQ)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._out(F.linear(self._input(x), self._weight(), self.bias))


class QDQConv2d(_QDQBase):
    """An :class:`~penjing.quantization.Int8Conv2d` as fake-quant ops (exported as QDQ)."""

    def __init__(self, layer: nn.Module, name: str):
        super().__init__(layer, name)
        if getattr(layer, "padding_mode", "zeros") != "zeros":
            raise ValueError(f"layer {name!r}: padding_mode={layer.padding_mode!r} is not exported "
                             "for int8 convs (zero padding only)")
        self.stride, self.dilation, self.groups = tuple(layer.stride), tuple(layer.dilation), layer.groups
        self.padding = getattr(layer, "padding_arg", tuple(layer.padding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(self._input(x), self._weight(), self.bias, self.stride, self.padding,
                     self.dilation, self.groups)
        return self._out(y)
