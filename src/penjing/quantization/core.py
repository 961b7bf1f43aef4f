"""The quantizer core: affine integer grids, scale / zero-point, quantize and dequantize.

An affine quantizer maps a real ``x`` to an integer ``q = clamp(round(x / s) + z, qmin, qmax)``
and back to ``x_hat = (q - z) * s``. Everything else in :mod:`penjing.quantization` is built on the
three facts pinned down here:

* the integer grid (``qmin..qmax``) of a bit width, signed or unsigned; symmetric grids are
  *restricted* (``-(2^(b-1)-1) .. 2^(b-1)-1``) so that ``-x`` and ``x`` quantize alike and the
  zero-point is exactly 0;
* scales come from a real range ``[lo, hi]`` that is first widened to contain 0 and the
  zero-point is rounded to an integer inside the grid ("nudging"), so **0.0 is always exactly
  representable**: a pruned weight stays exactly 0 after quantization, symmetric or not;
* rounding is to nearest (ties to even, as ``torch.round``) with saturation at the grid ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Bit widths the quantizer accepts (2..8 for compression, 16 for a near-lossless format).
SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8, 16)

#: The smallest scale handed out; keeps an all-zero channel finite (its q is 0 anyway).
MIN_SCALE = 1e-12


def check_bits(bits: int, what: str = "bits") -> int:
    """Validate a bit width; the error names the accepted values."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise ValueError(f"{what} must be one of {list(SUPPORTED_BITS)} (2-8 or 16), got {bits!r}")
    return bits


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized.

    ``axis`` is the channel axis for per-channel quantization (``None``: per-tensor).
    ``reduce_range`` drops one bit of the grid: x86 int8 GEMMs without VNNI (AVX2) add pairs
    of ``u8 * s8`` products in int16 and saturate on the full 8-bit range, so one operand fed
    to those kernels uses 7 bits (see :class:`~penjing.quantization.QuantConfig`).
    """

    bits: int = 8
    symmetric: bool = True
    signed: bool = True
    axis: int | None = None
    reduce_range: bool = False

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.reduce_range and self.bits < 3:
            raise ValueError("reduce_range needs at least 3 bits")

    @property
    def effective_bits(self) -> int:
        return self.bits - 1 if self.reduce_range else self.bits

    @property
    def qrange(self) -> tuple[int, int]:
        """``(qmin, qmax)`` of the integer grid."""
        b = self.effective_bits
        if self.symmetric:
            if self.signed:
                return -(2 ** (b - 1) - 1), 2 ** (b - 1) - 1
            return 0, 2**b - 1  # unsigned symmetric: non-negative data, zero-point 0
        if self.signed:
            return -(2 ** (b - 1)), 2 ** (b - 1) - 1
        return 0, 2**b - 1


def qparams(lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and integer zero-point (int32) for the real range ``[lo, hi]``.

    ``lo``/``hi`` are scalars (per-tensor) or one value per channel. The range is widened to
    contain 0, so the zero-point lands on the grid and 0.0 maps to an exact integer.
    """
    qmin, qmax = spec.qrange
    lo = torch.minimum(lo.detach().float(), torch.zeros_like(lo, dtype=torch.float32))
    hi = torch.maximum(hi.detach().float(), torch.zeros_like(hi, dtype=torch.float32))
    if spec.symmetric:
        if spec.signed:
            scale = torch.maximum(-lo, hi) / qmax
        else:
            scale = hi / qmax
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = (hi - lo) / (qmax - qmin)
        safe = torch.clamp(scale, min=MIN_SCALE)
        zero_point = torch.clamp(torch.round(qmin - lo / safe), qmin, qmax).to(torch.int32)
    scale = torch.clamp(scale, min=MIN_SCALE)  # an all-zero channel: finite scale, q == z
    return scale.contiguous(), zero_point.contiguous()


def _shape(t: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Reshape per-channel ``t`` to broadcast against ``x`` along ``axis``."""
    if axis is None or t.dim() == 0:
        return t
    view = [1] * x.dim()
    view[axis] = -1
    return t.reshape(view)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Integers (as an int32 tensor) of ``x``: round to nearest, add zero-point, saturate."""
    qmin, qmax = spec.qrange
    s = _shape(scale, x, spec.axis)
    z = _shape(zero_point, x, spec.axis)
    return torch.clamp(torch.round(x / s) + z, qmin, qmax).to(torch.int32)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``(q - z) * s`` in float32: the exact formula the codec protocol promises."""
    s = _shape(scale, q, axis)
    z = _shape(zero_point, q, axis)
    return (q.float() - z.float()) * s


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Quantize-dequantize with the straight-through estimator (gradient 1 inside the grid,
    0 where it saturates), through PyTorch's own fused fake-quant kernels."""
    qmin, qmax = spec.qrange
    if spec.axis is None or scale.dim() == 0:
        return torch.fake_quantize_per_tensor_affine(
            x, scale.reshape(()), zero_point.reshape(()).to(torch.int32), qmin, qmax)
    return torch.fake_quantize_per_channel_affine(
        x, scale, zero_point.to(torch.int32), spec.axis, qmin, qmax)


def lsq_fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Fake-quant with a *learned* step size (LSQ, Esser et al. 2020).

    The gradient reaches ``scale`` through ``round_pass`` (round in forward, identity in
    backward) and is damped by ``g = 1 / sqrt(numel_per_scale * qmax)`` as in the paper, so a
    step of the scale is comparable in size to a step of the weights.
    """
    qmin, qmax = spec.qrange
    per_scale = x.numel() / max(scale.numel(), 1)
    g = 1.0 / (per_scale * max(qmax, 1)) ** 0.5
    s = scale * g + (scale - scale * g).detach()  # value scale, gradient scaled by g
    s = _shape(torch.clamp(s, min=MIN_SCALE), x, spec.axis)
    z = _shape(zero_point.to(x.dtype), x, spec.axis)
    v = torch.clamp(x / s + z, qmin, qmax)
    v = v + (torch.round(v) - v).detach()  # round_pass
    return (v - z) * s


def sqnr_db(reference: torch.Tensor, quantized: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (``inf`` when the two are identical)."""
    signal = float(reference.detach().double().pow(2).sum())
    noise = float((reference.detach().double() - quantized.detach().double()).pow(2).sum())
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * torch.log10(torch.tensor(signal / noise)).item()
