"""An int8 layer's input quantization in float arithmetic, for kernels that multiply the int8
weight in float (the runtime's sparse int8 layers, :mod:`penjing.runtime`).

An :class:`~penjing.quantization.int_kernels.Int8Linear` / ``Int8Conv2d`` rounds its input to
an integer grid before its u8 x s8 kernel. A kernel that instead takes float activations and
int8 weights computes the same sums when it is handed the grid's values, ``(q - z) * s``:
every product is an integer times ``s * s_w``, so the two differ only by float rounding of
the sums (measured: 1e-7 relative on a 4096-wide layer). :class:`InputGrid` is that
rounding, copied from the layer's calibrated (``static``) or per-row (``dynamic``) scales.
"""

from __future__ import annotations

import torch
from torch import nn

from penjing.quantization.fake_quant import row_scales


class InputGrid(nn.Module):
    """``x -> (clamp(round(x / s) + z, qmin, qmax) - z) * s``: static (one calibrated scale)
    or dynamic (one scale per row, from the row alone, after the SmoothQuant factor)."""

    def __init__(self, mode: str, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int,
                 smooth: torch.Tensor | None = None):
        super().__init__()
        if mode not in ("static", "dynamic"):
            raise ValueError(f"InputGrid mode must be 'static' or 'dynamic', got {mode!r}")
        self.mode, self.qmin, self.qmax = mode, int(qmin), int(qmax)
        self._scale, self._zp = float(scale), int(zero_point)
        self.register_buffer("smooth", None if smooth is None else smooth.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.mode == "dynamic":
            if self.smooth is not None:
                x = x * self.smooth
            s = row_scales(x)
            return torch.clamp(torch.round(x / s), -127, 127).mul_(s)
        q = torch.round(x * (1.0 / self._scale)).add_(self._zp).clamp_(self.qmin, self.qmax)
        return q.sub_(self._zp).mul_(self._scale)

    def extra_repr(self) -> str:
        if self.mode == "dynamic":
            return f"dynamic per row, [-127, 127]{', smoothed' if self.smooth is not None else ''}"
        return f"static, scale={self._scale:.4g}, zero_point={self._zp}, [{self.qmin}, {self.qmax}]"
