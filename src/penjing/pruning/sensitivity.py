"""Sensitivity analysis: prune each layer alone at several sparsities and measure accuracy.

Layers differ a lot in how much pruning they tolerate (Han et al. 2015, Fig. 5); the curves
show it and :meth:`SensitivityResult.suggest` turns them into per-layer sparsities (the
largest one whose accuracy drop stays within a tolerance), ready for
``PruneConfig(sparsity=result.suggest(1.0))``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from penjing.core.report import last_report
from penjing.core.select import LayerSelector
from penjing.core.sensitivity import Unsupported
from penjing.core.sensitivity import sensitivity_scan as run_scan
from penjing.pruning.config import PruneConfig, check_sparsity
from penjing.pruning.targets import select_targets

DEFAULT_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


@dataclass
class SensitivityResult:
    """Accuracy of the model with one layer pruned at a time.

    ``curves[layer]`` lists ``(sparsity, accuracy)``; ``baseline`` is the unpruned accuracy
    (accuracies are fractions in [0, 1]).
    """

    baseline: float
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    granularity: str = "unstructured"
    #: layers with no (or a shortened) curve, and why
    skipped: dict[str, str] = field(default_factory=dict)

    def suggest(self, tolerance: float = 1.0) -> dict[str, float]:
        """Per layer, the largest tested sparsity whose accuracy drop is at most ``tolerance``
        percentage points (0.0 when even the smallest one costs more)."""
        if tolerance < 0:
            raise ValueError(f"tolerance (accuracy points) must be >= 0, got {tolerance}")
        out = {}
        for layer, curve in self.curves.items():
            ok = [s for s, acc in curve if 100 * (self.baseline - acc) <= tolerance + 1e-9]
            out[layer] = max(ok, default=0.0)
        return out

    def to_markdown(self, tolerance: float = 1.0) -> str:
        """Table: accuracy (%) per layer and sparsity, and the suggested sparsity."""
        sparsities = sorted({s for curve in self.curves.values() for s, _ in curve})
        suggested = self.suggest(tolerance)
        head = ["layer", *(f"{100 * s:g}%" for s in sparsities), f"suggested (<= {tolerance:g} pt drop)"]
        lines = [f"Sensitivity ({self.granularity}), dense accuracy {100 * self.baseline:.2f}%:", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for layer, curve in self.curves.items():
            acc = dict(curve)
            cells = [f"{100 * acc[s]:.2f}" if s in acc else "" for s in sparsities]
            lines.append(f"| {layer} | " + " | ".join(cells) + f" | {100 * suggested[layer]:g}% |")
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path, tolerance: float | None = 1.0) -> Path:
        """Write the curves (accuracy vs sparsity, one line per layer) as a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        fig, ax = plt.subplots(figsize=(6, 4))
        for layer, curve in self.curves.items():
            xs = [0.0, *(100 * s for s, _ in curve)]
            ys = [100 * self.baseline, *(100 * a for _, a in curve)]
            ax.plot(xs, ys, marker="o", markersize=3, label=layer)
        if tolerance is not None:
            ax.axhline(100 * self.baseline - tolerance, color="grey", linestyle="--", linewidth=1,
                       label=f"dense - {tolerance:g} pt")
        ax.set_xlabel(f"sparsity of the layer ({self.granularity}), %")
        ax.set_ylabel("test accuracy, %")
        ax.set_title("Pruning sensitivity, one layer at a time")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def sensitivity_scan(
    model: nn.Module,
    data: Any,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    layers: LayerSelector = None,
    *,
    exclude: LayerSelector = (),
    criterion: str = "magnitude",
    granularity: str = "unstructured",
    example_inputs: Any = None,
    forward_fn: Callable | None = None,
    metric: Callable | None = None,
    plot: str | Path | None = None,
    tolerance: float = 1.0,
) -> SensitivityResult:
    """Prune each selected layer alone, at each of ``sparsities`` (no fine-tuning), and
    measure the metric on ``data`` (default: top-1 accuracy; see :mod:`penjing.core.batch`).
    ``model`` itself is not changed (the one runner, :func:`penjing.core.sensitivity.sensitivity_scan`).

    ``granularity`` may be ``unstructured`` or ``channel``/``filter`` (then each layer loses
    that fraction of its filters; needs ``example_inputs`` or uses the first batch of
    ``data``; the classifier's curve is left out: its filters are the model's outputs).
    With ``plot``, the curves are written there as a PNG (the tolerance line drawn in).
    """
    from penjing.core.batch import example_from
    from penjing.core.report import Report
    from penjing.pruning.api import prune

    sparsities = sorted(set(sparsities))
    if not sparsities:
        raise ValueError("give at least one sparsity to test")
    for s in sparsities:
        check_sparsity(s, "sensitivity sparsity")
    probe = PruneConfig(sparsity=0.5, layers=layers, exclude=exclude, granularity=granularity
                        if granularity in ("channel", "filter") else "unstructured")
    names = [t.name for t in select_targets(model, probe, Report("prune"))]
    structured = granularity in ("channel", "filter")
    if structured:
        example_inputs = example_from(example_inputs, data, "structured sensitivity")

    def apply(trial: nn.Module, name: str, s: float) -> None:
        layer = trial.get_submodule(name) if name else trial
        config = PruneConfig(sparsity=s, criterion=criterion, granularity=granularity,
                             layers=lambda _n, m, layer=layer: m is layer)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "no layer was changed" when refused below
                prune(trial, config, example_inputs=example_inputs, forward_fn=forward_fn,
                      progress=False)
        except ValueError as exc:
            raise Unsupported(str(exc)) from None
        if structured and not any(c.name == name for c in last_report(trial).touched):
            raise Unsupported(f"{name}: its filters cannot be removed (they are the model's outputs)")

    scan = run_scan(model, names, sparsities, apply, data, forward_fn=forward_fn, metric=metric,
                    restore="model" if structured else "layer")
    result = SensitivityResult(baseline=scan.baseline, curves=scan.curves, granularity=granularity,
                               skipped=scan.skipped)
    if plot is not None:
        result.plot(plot, tolerance)
    return result
