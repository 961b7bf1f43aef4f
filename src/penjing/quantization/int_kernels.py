"""Real integer execution: ``convert(model)`` swaps fake-quantized layers for int8 modules.

Each :class:`Int8Linear` / :class:`Int8Conv2d` keeps its weight as an **int8 tensor** (plus
per-channel float scales) in its ``state_dict``, quantizes its float input with the scale and
zero-point calibrated by PTQ/QAT, multiplies ``u8 x s8`` with **int32 accumulation** in a
vendor kernel, and requantizes the int32 sums to float32 with ``s_x * s_w`` plus the bias (the
next layer quantizes that output again, so a ReLU / pooling / residual in between runs in
float and needs no integer variant).

Which kernel, by measurement (torch 2.13 CPU, AMD EPYC AVX2, 1 thread; /tmp numbers are in
``benchmarks/results/quantize.md``)::

    1024 -> 4096 Linear, batch 1 / 32 / 256, ms          fp32   (measured side by side)
    torch._int_mm (int8 x int8 -> int32)           4.2 / 128 / 1297   vs 1.5 / 12.7 / 61
    torch._weight_int8pack_mm (weight-only)        5.2 / 169 / 1336
    onednn::qlinear_pointwise (u8 x s8, fp32 out)  2.9 / 9.8 / 60
    quantized::linear_with_input_q_dq_qweight_dq_output_fp32 (fbgemm)
                                                   0.48 / 7.9 / 59
    Conv2d 20->50 3x3 on 4x4, batch 256: fp32 3.4, onednn::qconv_pointwise 2.1,
    quantized::conv2d (fbgemm, quantized in/out) 3.4 ms

* ``torch._int_mm`` on CPU is a reference loop (10-20x slower than fp32): not usable.
* Linear -> fbgemm's ``quantized::linear_with_input_q_dq_qweight_dq_output_fp32``: float in,
  static activation qparams, int8 GEMM, float out with bias, the fastest measured. It is an
  ATen op of the x86/fbgemm engine (not the deprecated ``torch.ao.quantization`` Python
  workflow, which only *calls* such ops).
* Conv2d -> oneDNN's ``onednn::qconv_pointwise`` with a float32 output: the kernel that
  PyTorch 2's x86 inductor quantization lowers to, so it is the maintained one; faster than
  fbgemm's conv here and exact (no output requantization step needed).
* Both x86 kernels multiply ``u8 x s8`` pairs with ``vpmaddubsw`` on AVX2, which saturates in
  int16 when both operands use their full 8-bit range (measured: errors of several units).
  One operand therefore gets a 7-bit range: by default the per-channel weights
  (``QuantConfig.weight_reduce_range``), which keeps full 8-bit activations, spares the int8
  Linear a clamp of its input (the kernel's own u8 saturation *is* the grid) and, measured on
  the 1024-4096-4096-1000 MLP, gives logits closer to float (34.5 vs 31.6 dB SQNR) than
  torch.ao's x86 choice of 7-bit activations (``act_reduce_range=True``, still available).
  With either, the kernels match exact integer arithmetic to float rounding.
* A ReLU that only follows an int8 layer runs inside the kernel (fbgemm's ``..._relu_output_fp32``
  op, oneDNN's ``relu`` post-op), see :mod:`.fuse_relu`: one call instead of two.
* Plan for removal: PyTorch 2.13 warns that quantized *tensors* (qint8, which fbgemm's
  prepack takes) will be removed. The oneDNN ops take plain int8/uint8 tensors, so Linear
  falls back to ``onednn::qlinear_pointwise`` (measured above: slower at batch 1 and 32, equal
  at 256) when the fbgemm op is gone, and every layer falls back to the ``"reference"``
  backend, exact integer arithmetic done in float64 (correct, slower), when both are gone.
  Every backend is looked up at run time. ``convert(model, backend="reference")``
  forces it. Asymmetric weights (nonzero weight zero-points) also use it.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from penjing.core.layers import is_hf_conv1d
from penjing.core.report import Report, record
from penjing.core.select import swap, type_name
from penjing.quantization.fake_quant import ActFakeQuant, WeightFakeQuant, dynamic_quant, row_scales
from penjing.quantization.fuse_relu import fuse_relu as fold_relu

BACKENDS = ("auto", "fbgemm", "onednn", "reference")


def _has_fbgemm_linear() -> bool:
    return (hasattr(torch.ops.quantized, "linear_with_input_q_dq_qweight_dq_output_fp32")
            and hasattr(torch.ops.quantized, "linear_with_input_q_dq_qweight_dq_relu_output_fp32")
            and any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm")))


def _has_onednn_linear() -> bool:
    return hasattr(torch.ops.onednn, "qlinear_pointwise") and hasattr(torch.ops.onednn, "qlinear_prepack") \
        and torch.backends.mkldnn.is_available()


def _has_onednn_conv() -> bool:
    return hasattr(torch.ops.onednn, "qconv_pointwise") and hasattr(torch.ops.onednn, "qconv_prepack") \
        and torch.backends.mkldnn.is_available()


def _engine() -> str:
    engines = torch.backends.quantized.supported_engines
    return "x86" if "x86" in engines else "fbgemm"


class _Int8Storage:
    """The integers live in the ``weight`` *buffer* (so ``state_dict()["...weight"]`` is the int8
    tensor the codec, the runtime and :mod:`.saving` read), while the *attribute* ``weight`` is a
    float32 view, ``(q - z) * s``: model code that reads ``layer.weight.dtype`` (HF ViT casts its
    pixels to ``patch_embeddings.projection.weight.dtype``) keeps seeing float. The view is
    built on first read and cached (no cost to the forward, which runs on the integers), and
    dropped when new weights load. ``weight_int8`` is the integer tensor itself."""

    @property
    def weight_int8(self) -> torch.Tensor:
        return self._buffers["weight"]

    @property
    def weight(self) -> torch.Tensor:
        return self._dequantized_weight()

    def _set_int8_weight(self, weight_q: torch.Tensor) -> None:
        # register_buffer refuses a name the class defines (the property): store it directly
        self._buffers["weight"] = weight_q.contiguous()
        self._non_persistent_buffers_set.discard("weight")

    def _dequantized_weight(self) -> torch.Tensor:
        """The float weight (``(q - z) * s``, exactly the fake-quant value), cached."""
        cached = self.__dict__.get("_float_weight")
        if cached is None:
            q = self.weight_int8
            view = [-1] + [1] * (q.dim() - 1)
            cached = (q.float() - self.weight_zero_point.float().reshape(view)) * self.weight_scale.reshape(view)
            self.__dict__["_float_weight"] = cached
        return cached

    def _apply(self, fn, recurse=True):
        self.__dict__["_float_weight"] = None  # moved or cast: rebuild the view from the integers
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        self.__dict__["_float_weight"] = None  # new integers: a new view
        super()._load_from_state_dict(*args, **kwargs)


class _Int8Base(_Int8Storage, nn.Module):
    """State shared by the int8 layers: int8 weight, scales, input qparams, a packed cache."""

    def __init__(self, weight_q: torch.Tensor, weight_scale: torch.Tensor, weight_zero_point: torch.Tensor,
                 bias: torch.Tensor | None, act: ActFakeQuant | None, backend: str, mode: str | None = None):
        super().__init__()
        #: "static" (calibrated per-tensor input), "dynamic" (per-row input scales at run time)
        #: or "weight" (weight-only: int8 storage, float compute)
        self.mode = mode or ("static" if act is not None else "weight")
        if weight_q.dtype != torch.int8:
            raise ValueError(f"int8 layers take an int8 weight, got {weight_q.dtype}")
        out = weight_q.shape[0]
        self._set_int8_weight(weight_q)
        self.register_buffer("weight_scale", weight_scale.detach().float().expand(out).contiguous())
        self.register_buffer("weight_zero_point", weight_zero_point.detach().to(torch.int32).expand(out).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        qmin, qmax = act.spec.qrange if act is not None else (0, 255)
        self.in_qmin, self.in_qmax = int(qmin), int(qmax)
        scale = act.scale.detach().float().reshape(()) if act is not None else torch.tensor(1.0)
        zp = act.zero_point.detach().to(torch.int32).reshape(()) if act is not None else torch.tensor(0, dtype=torch.int32)
        self.register_buffer("input_scale", scale.clone())
        self.register_buffer("input_zero_point", zp.clone())
        self.backend = backend
        # the x86 kernels add u8*s8 pairs in int16 (AVX2 vpmaddubsw): 2 * 255 * 127 overflows
        from penjing.quantization import cpu

        if (self.mode != "weight" and (self.in_qmax - self.in_qmin) > 127 and int(weight_q.abs().max()) > 63
                and backend != "reference" and not cpu.has_vnni()):
            warnings.warn(f"{backend}: full 8-bit activations with 8-bit weights can saturate int16 sums on "
                          "CPUs without VNNI; quantize with weight_reduce_range=True (the default) or act_reduce_range=True",
                          stacklevel=3)
        self._packed = None
        self._static_qparams: tuple[float, int] | None = None
        #: set by :func:`convert` when the ReLU after this layer was folded into the kernel
        self.fused_relu = False

    @property
    def static(self) -> bool:
        return self.mode == "static"

    def _load_from_state_dict(self, *args, **kwargs):
        self._packed = None  # new weights: repack lazily
        self._static_qparams = None
        super()._load_from_state_dict(*args, **kwargs)

    def _input_qparams(self, x: torch.Tensor) -> tuple[float, int]:
        if self._static_qparams is None:  # cached as Python numbers: no tensor sync per call
            self._static_qparams = (float(self.input_scale), int(self.input_zero_point))
        return self._static_qparams

    def _quantize_u8(self, x: torch.Tensor, scale: float, zp: int) -> tuple[torch.Tensor, int]:
        """Integer input on an unsigned grid starting at 0 (what the x86 kernels take)."""
        q = torch.clamp(torch.round(x * (1.0 / scale)) + zp, self.in_qmin, self.in_qmax)
        return (q - self.in_qmin).to(torch.uint8), zp - self.in_qmin

    def _reference_input(self, x: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
        q = torch.clamp(torch.round(x * (1.0 / scale)) + zp, self.in_qmin, self.in_qmax)
        return (q - zp).double()

    def _weight_ints(self) -> torch.Tensor:
        view = [-1] + [1] * (self.weight_int8.dim() - 1)
        return self.weight_int8.double() - self.weight_zero_point.double().reshape(view)

    def extra_repr(self) -> str:
        relu = ", relu" if self.fused_relu else ""
        grid = f" [{self.in_qmin}, {self.in_qmax}]" if self.static else ""
        return f"{tuple(self.weight_int8.shape)}, backend={self.backend}, input={self.mode}{grid}{relu}"

    @property
    def _post_op(self) -> str:
        return "relu" if self.fused_relu else "none"

    def float_input_grid(self) -> nn.Module | None:
        """This layer's input rounding as a float module (``None`` for weight-only layers), for
        a kernel that multiplies the int8 weight in float (see :mod:`.input_grid`)."""
        from penjing.quantization.input_grid import InputGrid

        if self.mode == "weight":
            return None
        fused = self.backend == "fbgemm"  # fbgemm rounds its own way (see InputGrid)
        if self.mode == "dynamic":
            return InputGrid("dynamic", torch.tensor(1.0), torch.tensor(0), -127, 127, getattr(self, "smooth", None),
                             fused)
        return InputGrid("static", self.input_scale, self.input_zero_point, self.in_qmin, self.in_qmax, None, fused)


class Int8Linear(_Int8Base):
    """``y = requant(int32(q_x @ q_w^T)) + b`` with an int8 weight.

    Input modes: ``static`` (one calibrated scale), ``dynamic`` (one scale per row computed
    from that row, so each sample's output is independent of its batch: the row is divided
    by its scale, the kernel runs at input scale 1 and zero-point 128, and the int32 sums are
    scaled back per row) and ``weight`` (weight-only: float compute on the int8 weight).
    """

    @classmethod
    def from_float(cls, layer: nn.Module, backend: str = "auto") -> Int8Linear:
        """From a fake-quantized ``nn.Linear`` or Hugging Face ``Conv1D``."""
        weight_q, scale, zp, act = _integer_weight(layer)
        if backend == "auto":
            backend = "fbgemm" if _has_fbgemm_linear() else "onednn" if _has_onednn_linear() else "reference"
        if backend in ("fbgemm", "onednn") and not bool((zp == 0).all()):
            backend = "reference"  # the packed kernels take symmetric weights only
        if backend not in ("fbgemm", "onednn", "reference"):
            raise ValueError(f"Int8Linear backends are fbgemm, onednn and reference, got {backend!r}")
        dyn = dynamic_quant(layer)
        module = cls(weight_q, scale, zp, layer.bias, act, backend, "dynamic" if dyn is not None else None)
        module.register_buffer("smooth", None if dyn is None or dyn.smooth is None else dyn.smooth.clone())
        if dyn is not None:
            module.in_qmin, module.in_qmax = -127, 127
        return module

    def _pack(self):
        if self._packed is None and self.backend == "onednn":
            self._packed = torch.ops.onednn.qlinear_prepack(self.weight_int8, None)
        if self._packed is None:
            # fbgemm packs from a qint8 tensor; creating one warns of the deprecation of
            # quantized tensors (the onednn backend is the planned replacement, see above)
            with _quantized_engine(_engine()), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                qw = torch._make_per_channel_quantized_tensor(
                    self.weight_int8, self.weight_scale.double(), self.weight_zero_point.long(), 0)
                # dynamic rows scale the sums after the kernel, so the bias is added after
                self._packed = torch.ops.quantized.linear_prepack(qw, None if self.mode == "dynamic" else self.bias)
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x if x.dim() == 2 else x.reshape(-1, shape[-1])
        if x2.dtype != torch.float32:
            x2 = x2.float()
        if self.mode == "weight":
            y = F.linear(x2, self._dequantized_weight(), self.bias)
            y = torch.relu(y) if self.fused_relu else y
        elif self.mode == "dynamic":
            y = self._dynamic(x2)
        else:
            y = self._static(x2)
        return y if x.dim() == 2 else y.reshape(*shape[:-1], y.shape[-1])

    def _static(self, x2: torch.Tensor) -> torch.Tensor:
        scale, zp = self._input_qparams(x2)
        if self.backend == "fbgemm":
            # the op quantizes on the full u8 grid: clamp to ours first (same integers);
            # a full 8-bit grid needs no clamp, the op saturates at 0 and 255 itself
            if self.in_qmax - self.in_qmin < 255:
                x2 = x2.clamp((self.in_qmin - zp) * scale, (self.in_qmax - zp) * scale)
            op = (torch.ops.quantized.linear_with_input_q_dq_qweight_dq_relu_output_fp32 if self.fused_relu
                  else torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32)
            return op(x2, scale, zp - self.in_qmin, self._pack())
        if self.backend == "onednn":
            q, zp_u8 = self._quantize_u8(x2, scale, zp)
            return torch.ops.onednn.qlinear_pointwise(
                q, scale, zp_u8, self._pack(), self.weight_scale, torch.zeros_like(self.weight_zero_point),
                self.bias, 1.0, 0, torch.float32, self._post_op, [None], "")
        acc = self._reference_input(x2, scale, zp) @ self._weight_ints().t()
        y = (acc * (scale * self.weight_scale.double())).float()
        if self.bias is not None:
            y = y + self.bias
        return torch.relu(y) if self.fused_relu else y

    def _dynamic(self, x2: torch.Tensor) -> torch.Tensor:
        if getattr(self, "smooth", None) is not None:
            x2 = x2 * self.smooth  # SmoothQuant's 1 / s, migrated into the weight
        s = row_scales(x2)  # (rows, 1), from each row alone
        xs = x2 / s  # in [-127, 127]: the kernel rounds it at scale 1, zero-point 128
        if self.backend == "fbgemm":
            acc = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(xs, 1.0, 128, self._pack())
        elif self.backend == "onednn":
            q = (torch.round(xs) + 128).to(torch.uint8)
            acc = torch.ops.onednn.qlinear_pointwise(
                q, 1.0, 128, self._pack(), self.weight_scale, torch.zeros_like(self.weight_zero_point),
                None, 1.0, 0, torch.float32, "none", [None], "")
        else:
            ints = torch.clamp(torch.round(xs), -127, 127).double()
            acc = ((ints @ self._weight_ints().t()) * self.weight_scale.double()).float()
        # in place on the kernel's fresh output: a new activation-sized tensor per layer costs
        # page faults on first touch (measured: addcmul 7.9 -> 1.3 ms per call on BERT at batch 32)
        if torch.is_grad_enabled():  # autograd takes no out= (the kernels have no gradient anyway)
            y = acc * s if self.bias is None else torch.addcmul(self.bias, acc, s)
            return torch.relu(y) if self.fused_relu else y
        y = acc.mul_(s) if self.bias is None else torch.addcmul(self.bias, acc, s, out=acc)
        return y.relu_() if self.fused_relu else y


class Int8Conv2d(_Int8Base):
    """2-D convolution on an int8 weight, u8 input, int32 accumulation, float32 output
    (``weight`` mode: weight-only, float compute on the int8 weight)."""

    def __init__(self, weight_q, weight_scale, weight_zero_point, bias, act, backend, *, stride, padding,
                 dilation, groups):
        super().__init__(weight_q, weight_scale, weight_zero_point, bias, act, backend)
        self.stride, self.padding, self.dilation, self.groups = list(stride), list(padding), list(dilation), groups

    @classmethod
    def from_float(cls, layer: nn.Conv2d, backend: str = "auto") -> Int8Conv2d:
        weight_q, scale, zp, act = _integer_weight(layer)
        if backend == "auto":
            backend = "onednn" if _has_onednn_conv() else "reference"
        if isinstance(layer.padding, str) or layer.padding_mode != "zeros" or not bool((zp == 0).all()):
            backend = "reference"  # the kernel takes explicit zero padding, symmetric weights
        if backend not in ("onednn", "reference"):
            raise ValueError(f"Int8Conv2d backends are onednn and reference, got {backend!r}")
        padding = layer.padding if not isinstance(layer.padding, str) else (0, 0)
        module = cls(weight_q, scale, zp, layer.bias, act, backend, stride=layer.stride, padding=padding,
                     dilation=layer.dilation, groups=layer.groups)
        module.padding_arg = layer.padding  # 'same' / 'valid' for the reference path
        module.padding_mode = layer.padding_mode
        return module

    def _pack(self, scale: float, zp: int):
        if self._packed is None:
            self._packed = torch.ops.onednn.qconv_prepack(
                self.weight_int8, self.weight_scale, scale, zp, self.stride, self.padding, self.dilation,
                self.groups, None)
        return self._packed

    def _float_conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        padding = getattr(self, "padding_arg", self.padding)
        mode = getattr(self, "padding_mode", "zeros")
        if mode != "zeros":
            pad = [p for p in reversed(self.padding) for _ in range(2)]
            x = F.pad(x, pad, mode=mode)
            padding = 0
        return F.conv2d(x, weight, None, self.stride, padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.mode == "weight":
            y = self._float_conv(x, self._dequantized_weight())
            if self.bias is not None:
                y = y + self.bias.reshape(1, -1, 1, 1)
            return torch.relu(y) if self.fused_relu else y
        scale, zp = self._input_qparams(x)
        if self.backend == "onednn":
            q, zp_u8 = self._quantize_u8(x, scale, zp)
            return torch.ops.onednn.qconv_pointwise(
                q, scale, zp_u8, self._pack(scale, zp_u8), self.weight_scale, torch.zeros_like(self.weight_zero_point),
                self.bias, self.stride, self.padding, self.dilation, self.groups, 1.0, 0, torch.float32,
                self._post_op, [None], "")
        acc = self._float_conv(self._reference_input(x, scale, zp), self._weight_ints())
        y = (acc * (scale * self.weight_scale.double()).reshape(1, -1, 1, 1)).float()
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, 1, 1)
        return torch.relu(y) if self.fused_relu else y


class Int8Embedding(_Int8Storage, nn.Module):
    """An embedding table stored as int8 rows with one scale (and zero-point) per row.

    A lookup gathers the int8 rows and dequantizes only those, ``(q - z) * s``: the same
    float32 arithmetic as the fake-quantized table, so outputs are bit-identical to it.
    """

    def __init__(self, weight_q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                 padding_idx: int | None):
        super().__init__()
        rows = weight_q.shape[0]
        self._set_int8_weight(weight_q)
        self.register_buffer("weight_scale", scale.detach().float().reshape(-1).expand(rows).contiguous())
        self.register_buffer("weight_zero_point", zero_point.detach().float().reshape(-1).expand(rows).contiguous())
        self.padding_idx = padding_idx

    @classmethod
    def from_float(cls, layer: nn.Embedding) -> Int8Embedding:
        weight_q, scale, zp, _ = _integer_weight(layer)
        return cls(weight_q, scale, zp, layer.padding_idx)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(indices, self.weight_int8)
        return (rows.float() - self.weight_zero_point[indices].unsqueeze(-1)) * self.weight_scale[indices].unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight_int8.shape)}, int8 rows, one scale per row"


class _quantized_engine:
    def __init__(self, engine: str):
        self.engine = engine

    def __enter__(self):
        self.old = torch.backends.quantized.engine
        torch.backends.quantized.engine = self.engine

    def __exit__(self, *exc):
        torch.backends.quantized.engine = self.old


def _integer_weight(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, ActFakeQuant | None]:
    """int8 codes, scale, zero-point of a fake-quantized layer, and its input quantizer."""
    from penjing.core.params import parametrizations

    wq = next((p for p in parametrizations(layer) if isinstance(p, WeightFakeQuant)), None)
    if wq is None:
        raise ValueError(f"{type(layer).__name__} is not quantized; run penjing.quantize first")
    conv1d = is_hf_conv1d(layer)  # its weight is [in, out]: the int8 layer takes the transpose
    if wq.spec.axis not in (None, 1 if conv1d else 0):
        raise ValueError("int8 layers take per-output-channel or per-tensor weight scales")
    with torch.no_grad():
        w = layer.weight.detach()
        q = wq.integers(w)
        q = q.t().contiguous() if conv1d else q
    act = getattr(layer, "input_quant", None)
    if isinstance(act, ActFakeQuant) and not act.enabled:
        raise ValueError("the input quantizer was never calibrated; run calibration first")
    return q.to(torch.int8), wq.scale.detach().reshape(-1), wq.zero_point.detach().reshape(-1), \
        act if isinstance(act, ActFakeQuant) else None


def _weight_quantizer(layer: nn.Module) -> WeightFakeQuant | None:
    from penjing.core.params import parametrizations

    return next((p for p in parametrizations(layer) if isinstance(p, WeightFakeQuant)), None)


def _executable(layer: nn.Module) -> str | None:
    """Why ``layer`` cannot run on int8 kernels (None when it can)."""
    wq = _weight_quantizer(layer)
    if wq.spec.bits > 8:
        return f"{wq.spec.bits}-bit weights do not fit int8; it stays fake-quantized (float compute)"
    if not isinstance(layer, nn.Linear | nn.Conv2d | nn.Embedding) and not is_hf_conv1d(layer):
        return f"{type_name(layer)} has no int8 kernel; it stays fake-quantized (float compute)"
    if isinstance(layer, nn.Embedding) and layer.max_norm is not None:
        return "Embedding with max_norm renormalizes its rows in forward; it stays fake-quantized"
    act = getattr(layer, "input_quant", None)
    if isinstance(act, ActFakeQuant) and (act.spec.qrange[1] - act.spec.qrange[0]) > 255:
        return (f"{act.spec.bits}-bit activations do not fit the x86 int8 kernels' u8 input; it "
                "stays fake-quantized (float compute)")
    return None


def _describe(module: nn.Module) -> str:
    if isinstance(module, Int8Embedding):
        return "int8 rows (gather + per-row dequantize)"
    relu = " + fused ReLU" if module.fused_relu else ""
    inputs = {"static": "static u8 input", "dynamic": "dynamic per-row input",
              "weight": "float input (weight-only)"}[module.mode]
    return f"int8 {module.backend} kernel, {inputs}{relu}"


def _graph_safe(targets: list[tuple[str, nn.Module]]) -> bool:
    """Full 8-bit activations meet the weights in the graph's kernels: safe with VNNI, or when
    every weight keeps to 7 bits (AVX2 sums product pairs in int16)."""
    from penjing.quantization.cpu import has_vnni

    if has_vnni():
        return True
    return all(_weight_quantizer(m).spec.reduce_range or _weight_quantizer(m).spec.bits < 8 for _, m in targets)


def _no_graph(model: nn.Module, targets: list[tuple[str, nn.Module]], backend: str, asked: bool) -> str | None:
    """Why ``model`` does not get the int8 graph, before trying to build it (None: try)."""
    if not asked and not any(isinstance(m, nn.Conv2d) for _, m in targets):
        # measured: on MLPs the layer-by-layer kernels already match torch.ao static int8
        return "no quantized Conv2d (graph=None builds the int8 graph for CNNs; graph=True asks for it)"
    if backend != "auto":
        return f"backend={backend!r} was asked for (the int8 graph runs PyTorch's x86 quantized engine)"
    if not _graph_safe(targets):
        return ("8-bit weights meet full 8-bit activations, which can saturate the int16 sums of "
                "AVX2 kernels on this CPU (no VNNI); quantize with reduce_range='weights' for the graph")
    return None


def convert_into(model: nn.Module, report: Report, backend: str = "auto", fuse_relu: bool = True,
                 graph: bool | None = None) -> None:
    """Swap the fake-quantized layers of ``model`` for int8 modules, recording each in ``report``.

    With ``graph`` (None, the default: for CNNs; True: any model; ``auto`` backend) a
    traceable, statically calibrated model gets int8 tensors flowing between its layers (:mod:`.int8_graph`); the layers that graph
    cannot take are converted one by one after it. When no graph can be built the model
    converts layer by layer and the report says why."""
    if backend not in BACKENDS:
        raise ValueError(f"convert: backend must be one of {list(BACKENDS)}, got {backend!r}")
    targets = [(n, m) for n, m in model.named_modules() if _weight_quantizer(m) is not None]
    if not targets:
        raise ValueError(f"{type(model).__name__} has no quantized Linear/Conv2d layers to convert; "
                         "run penjing.quantize(model, config, data=...) first")
    if any(not name for name, _ in targets):
        raise ValueError("convert: cannot convert a bare layer in place; wrap it in a model (nn.Sequential)")
    why = "graph=False was asked for" if graph is False else _no_graph(model, targets, backend, graph is True)
    if why is None:
        from penjing.quantization.int8_graph import build_int8_graph

        why = build_int8_graph(model, report)
    graph = why is None
    if not graph:
        report.note(f"converted layer by layer (float tensors between int8 layers): {why}")
    else:
        targets = [(n, m) for n, m in targets if _weight_quantizer(model.get_submodule(n)) is not None
                       and model.get_submodule(n) is m]
    converted = []
    for name, module in targets:
        why = _executable(module)
        if why is not None:
            report.skip(name, module, why)
            continue
        was_training = module.training
        if isinstance(module, nn.Embedding):
            new = Int8Embedding.from_float(module)
        elif isinstance(module, nn.Linear) or is_hf_conv1d(module):  # a Conv1D: a Linear of its transpose
            new = Int8Linear.from_float(module, backend)
        else:
            new = Int8Conv2d.from_float(module, "auto" if backend == "fbgemm" else backend)
        new.train(was_training)
        swap(model, name, new)
        converted.append((name, type_name(module), new))
    if not converted and not graph:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in report.skipped[:5])
        raise ValueError(f"convert: no layer of {type(model).__name__} can run on int8 kernels ({reasons})")
    if fuse_relu and not graph:
        fold_relu(model, (_Int8Base,))
    for name, kind, new in converted:
        report.touch(name, kind, "fake-quantized", _describe(new))
    model.eval()


def convert(model: nn.Module, backend: str = "auto", fuse_relu: bool = True,
            graph: bool | None = None) -> nn.Module:
    """Swap every fake-quantized layer of ``model`` for an int8 module (in place); return it.

    Linear and Conv2d run on x86 int8 kernels (static, dynamic per-row or weight-only input,
    as quantized), Embedding as int8 rows. Layers that cannot (16-bit weights or
    activations, other layer types) stay fake-quantized; ``pj.last_report(model)`` names each
    with the reason.

    By default (``graph=None``) a statically calibrated CNN that ``torch.fx`` traces gets
    int8 tensors flowing from layer to layer (:mod:`.int8_graph`: BN folded, ReLU / ReLU6 /
    SiLU / Hardswish and residual sums fused; its layers are ``torch.ao.nn.quantized``
    modules, saved by :func:`~penjing.quantization.save_quantized`). A model that cannot
    (QAT or dynamic activations, untraceable, a backend other than ``auto``) converts layer by
    layer, float in and out of each int8 layer, and ``pj.last_report(model)`` says why. A model
    without a quantized Conv2d (an MLP, where the layer kernels measured at parity with
    torch.ao's static int8) converts layer by layer unless ``graph=True``;
    ``graph=False`` asks for layer by layer explicitly (what ONNX export and the codec's size
    accounting read). There, with ``fuse_relu`` an ``nn.ReLU`` that only follows an int8 layer
    runs inside that layer's kernel (see :mod:`.fuse_relu`; the ReLU becomes ``nn.Identity``).
    """
    report = Report("convert")
    convert_into(model, report, backend, fuse_relu, graph)
    record(model, report)
    return model


def int8_layers(model: nn.Module) -> list[tuple[str, _Int8Base]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _Int8Base)]
