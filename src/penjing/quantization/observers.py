"""Observers: watch a tensor (or a stream of activation batches) and pick its quantization range.

* ``minmax``         -- the smallest and largest value seen;
* ``moving_average`` -- an exponential moving average of each batch's min / max (robust to
                        one odd batch; the default for activations during QAT);
* ``percentile``     -- clip to the p-th percentile of |x| (or of x on each side); outliers
                        are saturated instead of stretching the grid for everyone;
* ``mse``            -- search the clipping range that minimises the mean squared
                        quantization error (clipping error vs rounding error, per channel).

Percentile and MSE need the values, not just the extremes: activations keep a bounded random
sample of what they see (``max_samples``), so memory does not grow with the calibration set.
Weights are observed once, per channel when asked; an observer can ignore exact zeros so that
the range of a pruned layer is fitted to its surviving weights only.
"""

from __future__ import annotations

import torch
from torch import nn

from penjing.quantization.core import QuantSpec, fake_quantize, qparams

OBSERVERS = ("minmax", "moving_average", "percentile", "mse")


def check_observer(name: str, what: str = "observer") -> str:
    if name not in OBSERVERS:
        raise ValueError(f"{what} must be one of {list(OBSERVERS)}, got {name!r}")
    return name


def _per_channel_view(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``x`` as (channels, values) for per-channel statistics, (1, values) per-tensor."""
    if axis is None:
        return x.reshape(1, -1)
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


def _mse_range(rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec,
               mask: torch.Tensor | None, steps: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrink ``[lo, hi]`` by factors in (0, 1] and keep, per row, the one with least MSE."""
    row_spec = QuantSpec(spec.bits, spec.symmetric, spec.signed, 0 if rows.shape[0] > 1 else None,
                         spec.reduce_range)
    best_err = torch.full((rows.shape[0],), float("inf"))
    best_lo, best_hi = lo.clone(), hi.clone()
    for factor in torch.linspace(1.0, 1.0 / steps, steps):
        c_lo, c_hi = lo * factor, hi * factor
        scale, zp = qparams(c_lo, c_hi, row_spec)
        if row_spec.axis is None:
            scale, zp = scale.reshape(()), zp.reshape(())
        err = (fake_quantize(rows, scale, zp, row_spec) - rows).pow(2)
        if mask is not None:
            err = err * mask
        err = err.sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo = torch.where(better, c_lo, best_lo)
        best_hi = torch.where(better, c_hi, best_hi)
    return best_lo, best_hi


def tensor_range(x: torch.Tensor, spec: QuantSpec, method: str = "minmax", *, percentile: float = 99.99,
                 ignore_zeros: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Range ``(lo, hi)`` of one tensor (per channel along ``spec.axis``) by ``method``.

    With ``ignore_zeros`` the exact zeros (pruned weights) take no part in the statistics;
    they still quantize to exactly 0 because every range contains 0.
    """
    check_observer(method)
    x = x.detach().float()
    rows = _per_channel_view(x, spec.axis)
    mask = (rows != 0).float() if ignore_zeros else None
    big = torch.finfo(torch.float32).max
    if mask is not None:
        lo = torch.where(rows != 0, rows, torch.full_like(rows, big)).amin(1)
        hi = torch.where(rows != 0, rows, torch.full_like(rows, -big)).amax(1)
        empty = mask.sum(1) == 0
        lo = torch.where(empty, torch.zeros_like(lo), lo)
        hi = torch.where(empty, torch.zeros_like(hi), hi)
    else:
        lo, hi = rows.amin(1), rows.amax(1)
    if method == "percentile":
        q = percentile / 100.0
        if spec.symmetric:
            a = rows.abs()
            if mask is not None:
                a = torch.where(rows != 0, a, torch.full_like(a, float("nan")))
            bound = torch.nan_to_num(torch.nanquantile(a, q, dim=1), nan=0.0)
            lo, hi = torch.maximum(lo, -bound), torch.minimum(hi, bound)
        else:
            r = rows if mask is None else torch.where(rows != 0, rows, torch.full_like(rows, float("nan")))
            lo = torch.nan_to_num(torch.nanquantile(r, 1 - q, dim=1), nan=0.0)
            hi = torch.nan_to_num(torch.nanquantile(r, q, dim=1), nan=0.0)
    elif method == "mse":
        lo, hi = _mse_range(rows, lo, hi, spec, mask)
    if spec.axis is None:
        return lo.reshape(()), hi.reshape(())
    return lo, hi


class ActivationObserver(nn.Module):
    """Streams activation batches and returns a per-tensor range for one of :data:`OBSERVERS`."""

    def __init__(self, method: str = "minmax", *, momentum: float = 0.1, percentile: float = 99.99,
                 max_samples: int = 1 << 18):
        super().__init__()
        self.method = check_observer(method, "activation observer")
        self.momentum = momentum
        self.percentile = percentile
        self.max_samples = max_samples
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))
        self.samples: torch.Tensor | None = None  # bounded reservoir for percentile / mse
        self.batches = 0

    def reset(self) -> None:
        self.min_val.fill_(float("inf"))
        self.max_val.fill_(float("-inf"))
        self.samples = None
        self.batches = 0

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        if x.numel() == 0:
            return
        lo, hi = x.min(), x.max()
        if self.method == "moving_average" and self.batches > 0:
            self.min_val.lerp_(lo, self.momentum)
            self.max_val.lerp_(hi, self.momentum)
        else:
            self.min_val.copy_(torch.minimum(self.min_val, lo))
            self.max_val.copy_(torch.maximum(self.max_val, hi))
        self.batches += 1
        if self.method in ("percentile", "mse"):
            flat = x.reshape(-1)
            take = min(flat.numel(), max(self.max_samples // 8, 1))
            pick = flat[torch.randint(flat.numel(), (take,))] if take < flat.numel() else flat
            self.samples = pick if self.samples is None else torch.cat([self.samples, pick])
            if self.samples.numel() > self.max_samples:
                keep = torch.randperm(self.samples.numel())[: self.max_samples]
                self.samples = self.samples[keep]

    @property
    def has_data(self) -> bool:
        return self.batches > 0

    def range(self, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.has_data:
            raise RuntimeError("observer saw no data")
        if self.method in ("percentile", "mse") and self.samples is not None:
            lo, hi = tensor_range(self.samples, spec, self.method, percentile=self.percentile)
            return lo, hi
        return self.min_val.clone(), self.max_val.clone()
