"""SmoothQuant-style migration of activation outliers into the weights (Xiao et al. 2023).

Transformer activations carry a few outlier channels (LayerNorm outputs of -13..+29 where
most channels sit within +-2), so a per-row int8 grid spends its range on them. For each
Linear, input channel ``j`` is divided by ``s_j = max|x_j|^a / max|W_:,j|^(1-a)`` and weight
column ``j`` multiplied by it: ``(x / s) @ (W * s)^T == x @ W^T``, with both sides now easy to
quantize. The division runs inside the layer's per-row input quantizer (one multiply in the
same pass), so any model works without a graph rewrite. ``alpha="auto"`` picks, per layer,
the strength (or no smoothing) whose int8 output is closest to the float output on the
calibration inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from penjing.quantization.core import fake_quantize, qparams
from penjing.quantization.observers import tensor_range

ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
_ROWS = 1024  # calibration rows kept per layer for the alpha search


class _InputStats:
    """Per-channel max |x| of a Linear's input, and a bounded sample of its rows."""

    def __init__(self):
        self.absmax: torch.Tensor | None = None
        self.rows: list[torch.Tensor] = []
        self.kept = 0

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach().float().reshape(-1, args[0].shape[-1])
        m = x.abs().amax(0)
        self.absmax = m if self.absmax is None else torch.maximum(self.absmax, m)
        if self.kept < _ROWS:
            take = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(self.kept))[: _ROWS - self.kept]]
            self.rows.append(take)
            self.kept += take.shape[0]


def _row_fake_quant(x: torch.Tensor) -> torch.Tensor:
    scale = torch.clamp(x.abs().amax(-1, keepdim=True) / 127, min=1e-8)
    return torch.clamp(torch.round(x / scale), -127, 127) * scale


def _error(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, spec) -> float:
    ws = w * s
    lo, hi = tensor_range(ws, spec)
    scale, zp = qparams(lo, hi, spec)
    wq = fake_quantize(ws, scale, zp, spec)
    return float((_row_fake_quant(x / s) @ wq.t() - x @ w.t()).pow(2).sum())


def migration_scales(absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha)`` (1 for channels that never move)."""
    wmax = weight.detach().abs().amax(0).clamp(min=1e-5)
    s = absmax.clamp(min=1e-5).pow(alpha) / wmax.pow(1 - alpha)
    return torch.where(absmax > 0, s, torch.ones_like(s)).clamp(min=1e-5)


@torch.no_grad()
def smooth_linears(model: nn.Module, layers, calib: list, config, run, undo) -> tuple[dict[str, torch.Tensor], str]:
    """Migrate activation outliers of every selected Linear into its weight (in place).

    Returns ``{layer name: 1 / s}`` (the factor the layer's input quantizer applies) and a
    one-line summary for the report; ``undo`` receives the original weights.
    """
    from penjing.core.params import original, parametrizations
    from penjing.quantization.ptq import calibrate_hooks

    linears = [(n, m) for n, m in layers if isinstance(m, nn.Linear)]
    stats = {n: _InputStats() for n, _ in linears}
    calibrate_hooks(model, calib, run, {m: stats[n] for n, m in linears}, [n for n, _ in linears])
    factors, chosen = {}, []
    for name, layer in linears:
        dense = original(layer) if parametrizations(layer) else layer.weight
        w = layer.weight.detach().float()
        st = stats[name]
        x = torch.cat(st.rows)
        spec = config.weight_spec(8)
        if config.smooth_alpha == "auto":
            best, best_err = None, _error(x, w, torch.ones(w.shape[1]), spec)  # no smoothing
            for a in ALPHAS:
                e = _error(x, w, migration_scales(st.absmax, w, a), spec)
                if e < best_err:
                    best, best_err = a, e
        else:
            best = float(config.smooth_alpha)
        chosen.append(best)
        if best is None:
            continue
        s = migration_scales(st.absmax, w, best)
        undo.append((dense, dense.detach().clone()))
        dense.mul_(s)  # dense weight under any mask: masks commute with a column scale
        factors[name] = (1.0 / s).contiguous()
    moved = [a for a in chosen if a is not None]
    summary = (f"SmoothQuant: {len(moved)} of {len(chosen)} Linear layer(s) smoothed"
               + (f", alpha {min(moved):.1f}-{max(moved):.1f}" if moved else "")
               + (" (tuned per layer)" if config.smooth_alpha == "auto" else ""))
    return factors, summary
