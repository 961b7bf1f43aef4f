"""Accuracy against parameters: factorise a copy of the model at several budgets, fine-tune
each with the one training loop, and measure before and after fine-tuning."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn
from torch.utils.data import Dataset

from penjing.core.report import last_report
from penjing.low_rank.api import lowrank
from penjing.low_rank.config import LowRankConfig


@dataclass
class CurvePoint:
    budget: float
    params: int
    param_ratio: float
    flop_ratio: float | None
    accuracy_decomposed: float
    accuracy_finetuned: float


def accuracy_curve(model: nn.Module, train: Dataset, test: Dataset, budgets: list[float], *,
                   config: LowRankConfig | None = None, epochs: int = 5, lr: float = 1e-3,
                   seed: int = 0, progress: bool = False) -> tuple[float, list[CurvePoint]]:
    """Return the dense accuracy and one :class:`CurvePoint` per parameter budget (``model``
    itself is left untouched)."""
    from penjing.train import evaluate, fit

    base = config or LowRankConfig()
    dense = evaluate(model, test)
    points = []
    for budget in budgets:
        trial = copy.deepcopy(model)
        cfg = replace(base, rank=None, energy=None, flops=None, params=budget)
        lowrank(trial, cfg, data=train)
        result = last_report(trial).extra["plan"]
        decomposed = evaluate(trial, test)
        fit(trial, train, epochs=epochs, lr=lr, seed=seed, progress=progress,
            desc=f"fine-tune at {budget:.0%}")
        points.append(CurvePoint(budget, result.params_after, result.param_ratio, result.flop_ratio,
                                 decomposed, evaluate(trial, test)))
    return dense, points


def curve_markdown(dense: float, points: list[CurvePoint], params_dense: int) -> str:
    lines = ["| budget | params | params kept | MACs kept | accuracy (no fine-tune) | accuracy (fine-tuned) | vs dense |",
             "|---:|---:|---:|---:|---:|---:|---:|",
             f"| dense | {params_dense:,} | 100.0% | 100.0% | {100 * dense:.2f}% | {100 * dense:.2f}% | +0.00 |"]
    for p in points:
        flops = "?" if p.flop_ratio is None else f"{100 * p.flop_ratio:.1f}%"
        lines.append(f"| {p.budget:.0%} | {p.params:,} | {100 * p.param_ratio:.1f}% | {flops} | "
                     f"{100 * p.accuracy_decomposed:.2f}% | {100 * p.accuracy_finetuned:.2f}% | "
                     f"{100 * (p.accuracy_finetuned - dense):+.2f} |")
    return "\n".join(lines) + "\n"


def plot_curve(curves: dict[str, tuple[float, list[CurvePoint]]], path: str | Path) -> Path:
    """Accuracy vs fraction of parameters kept, one line per model (dense as a dotted line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, (dense, points)) in enumerate(curves.items()):
        color = f"C{i}"
        xs = [100 * p.param_ratio for p in points]
        ax.plot(xs, [100 * p.accuracy_finetuned for p in points], "o-", color=color, label=f"{label} fine-tuned")
        ax.plot(xs, [100 * p.accuracy_decomposed for p in points], "x:", color=color, alpha=0.6,
                label=f"{label} before fine-tune")
        ax.axhline(100 * dense, color=color, linestyle="--", linewidth=0.8)
    ax.set_xlabel("parameters kept (% of dense)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(bottom=max(0, ax.get_ylim()[0]))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
