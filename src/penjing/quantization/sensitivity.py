"""Sensitivity analysis: quantize one layer at a time, rank layers, suggest mixed precision.

For every quantizable layer and every candidate bit width, a copy of the float model gets
*only that layer's* weights quantized (PTQ), and its accuracy drop is measured. Layers are
ranked by the drop at the lowest width; the mixed-precision suggestion gives each layer the
smallest width whose drop stays within ``tolerance`` (else the largest candidate), which is
exactly what ``QuantConfig(layer_bits=...)`` takes (layer names are exact keys).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from torch import nn
from torch.utils.data import Dataset

from penjing.quantization.config import QuantConfig
from penjing.quantization.ptq import quantizable_layers, quantize
from penjing.train import evaluate


@dataclass
class Sensitivity:
    baseline: float
    #: layer name -> {bits: accuracy with only that layer quantized}
    accuracy: dict[str, dict[int, float]]
    tolerance: float
    suggestion: dict[str, int] = field(default_factory=dict)

    def ranking(self) -> list[tuple[str, float]]:
        """Layers, most sensitive first, by accuracy drop at the lowest width tried."""
        low = min(next(iter(self.accuracy.values())))
        drops = [(name, self.baseline - acc[low]) for name, acc in self.accuracy.items()]
        return sorted(drops, key=lambda t: -t[1])

    def to_markdown(self) -> str:
        widths = sorted(next(iter(self.accuracy.values())))
        head = ["layer", *(f"{b}-bit acc %" for b in widths), "suggested bits"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, _ in self.ranking():
            cells = [f"{100 * self.accuracy[name][b]:.2f}" for b in widths]
            lines.append("| " + " | ".join([name, *cells, str(self.suggestion[name])]) + " |")
        lines.append(f"\nfloat accuracy {100 * self.baseline:.2f}%; tolerance {100 * self.tolerance:.1f} points")
        return "\n".join(lines)


def sensitivity(model: nn.Module, test: Dataset, *, bits: tuple[int, ...] = (2, 4, 8),
                config: QuantConfig | None = None, tolerance: float = 0.005) -> Sensitivity:
    """Quantize each layer of ``model`` alone at each width in ``bits`` (weights only) and
    measure accuracy on ``test``; ``model`` itself is not changed."""
    if not bits:
        raise ValueError("give at least one bit width to try")
    base = config or QuantConfig()
    baseline = evaluate(model, test)
    names = [n for n, _ in quantizable_layers(model, base)]
    result: dict[str, dict[int, float]] = {}
    for name in names:
        result[name] = {}
        for b in sorted(bits):
            trial = copy.deepcopy(model)
            cfg = QuantConfig(bits=b, activations="none", per_channel=base.per_channel,
                              symmetric=base.symmetric, observer=base.observer, layers=[name],
                              fold_bn=base.fold_bn)
            quantize(trial, cfg, progress=False)
            result[name][b] = evaluate(trial, test)
    suggestion = {}
    for name, accs in result.items():
        ok = [b for b in sorted(accs) if baseline - accs[b] <= tolerance]
        suggestion[name] = ok[0] if ok else max(accs)
    return Sensitivity(baseline=baseline, accuracy=result, tolerance=tolerance, suggestion=suggestion)
