"""An int8 layer's input quantization in float arithmetic, for kernels that multiply the int8
weight in float (the runtime's sparse int8 layers, :mod:`penjing.runtime`).

An :class:`~penjing.quantization.int_kernels.Int8Linear` / ``Int8Conv2d`` rounds its input to
an integer grid before its u8 x s8 kernel. A kernel that instead takes float activations and
int8 weights computes the same sums when it is handed the grid's integers ``q - z``: products
of integers, summed exactly in float32 while the partial sums stay below 2^24 (a 90%-sparse
4096-wide row holds at most ~520 products of at most 255 x 127, below it). :class:`InputGrid`
is that rounding, copied from the layer's calibrated (``static``) or per-row (``dynamic``)
scales.
"""

from __future__ import annotations

import torch
from torch import nn

from penjing.quantization.fake_quant import row_scales


class InputGrid(nn.Module):
    """Static (one calibrated scale): ``x -> clamp(round(x / s) + z, qmin, qmax) - z``, the
    integers themselves, as floats; the layer's scale ``s`` is :attr:`step`, for the kernel to
    fold into its per-channel weight scales (so that the kernel's sums are sums of integers,
    exact in float32, and its outputs those of the int8 GEMM). Dynamic (one scale per row,
    from the row alone, after the SmoothQuant factor): ``x -> clamp(round(x / s_row)) * s_row``
    and :attr:`step` 1."""

    def __init__(self, mode: str, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
                 smooth: torch.Tensor | None = None, fused: bool = False):
        super().__init__()
        if mode not in ("static", "dynamic"):
            raise ValueError(f"InputGrid mode must be 'static' or 'dynamic', got {mode!r}")
        self.mode, self.qmin, self.qmax = mode, int(qmin), int(qmax)
        self._scale, self._zp = float(scale), int(zero_point)
        #: round as fbgemm's quantizer does, ``round(fma(x, 1 / s, z))`` in float32, not
        #: ``round(x / s) + z``: the two differ on about 1 input in 250,000 (measured against
        #: ``torch.quantize_per_tensor``), and one flipped integer moves an output by 1e-4
        self.fused = bool(fused)
        self._inverse = float(torch.tensor(1.0) / torch.tensor(self._scale))  # float32, as fbgemm's
        self.register_buffer("smooth", None if smooth is None else smooth.detach().float().clone())

    @property
    def step(self) -> float:
        """The input scale the outputs still need (static: ``s``; dynamic: 1, applied per row)."""
        return self._scale if self.mode == "static" else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.mode == "dynamic":
            if self.smooth is not None:
                x = x * self.smooth
            s = row_scales(x)
            xs = x / s
            # fbgemm quantizes x / s at scale 1, zero-point 128: round(float32(xs + 128)) - 128
            q = torch.round(xs.add_(128)).sub_(128) if self.fused else torch.round(xs)
            return q.clamp_(-127, 127).mul_(s)
        if self.fused:  # float32 fma: x * inverse exact in float64, plus z, rounded once to float32
            q = torch.round((x.double() * self._inverse + self._zp).float())
        else:
            q = torch.round(x * (1.0 / self._scale)).add_(self._zp)
        return q.clamp_(self.qmin, self.qmax).sub_(self._zp)

    def extra_repr(self) -> str:
        if self.mode == "dynamic":
            return f"dynamic per row, [-127, 127]{', smoothed' if self.smooth is not None else ''}"
        return f"static, scale={self._scale:.4g}, zero_point={self._zp}, [{self.qmin}, {self.qmax}]"
