"""Which layers become binary/ternary: the one layer rule, minus the first and last layers.

The papers (BinaryConnect, XNOR-Net, TWN, TTQ) keep the first and the last layer in full
precision: the first sees raw pixels through few weights, the last produces the logits, and
both are a tiny share of the weights. penjing does the same unless told otherwise, and
records them as skipped.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.conv import _ConvNd

from penjing.core.layers import pick_layers, weighted_layers
from penjing.core.params import parametrizations
from penjing.core.report import Report
from penjing.core.select import LayerSelector

#: The layer types whose ``weight`` can be binarized/ternarized (ConvNd includes ConvTransposeNd).
SUPPORTED = (nn.Linear, _ConvNd, nn.Embedding, nn.EmbeddingBag)


def unsupported(marker: tuple[type, ...]):
    """``supports(name, module)`` for :func:`penjing.core.layers.pick_layers`."""

    def supports(name: str, module: nn.Module) -> str | None:
        if isinstance(module, nn.MultiheadAttention):
            return ("its q/k/v projections are one packed in_proj_weight; its out_proj Linear "
                    "is converted on its own")
        if not isinstance(module, SUPPORTED):
            return (f"{type(module).__name__} is not a Linear, ConvNd, ConvTransposeNd or "
                    "Embedding layer")
        if any(isinstance(p, marker) for p in parametrizations(module)):
            return "already binary/ternary (convert a layer once)"
        return None

    return supports


def choose_layers(model: nn.Module, layers: LayerSelector, exclude: LayerSelector,
                  keep_first_last: bool, verb: str, marker: tuple[type, ...],
                  report: Report) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs to convert; skips are recorded in ``report``."""
    chosen = pick_layers(model, layers, exclude, verb=verb, supports=unsupported(marker),
                         report=report)
    if not keep_first_last:
        return chosen
    weighted = [n for n, m in weighted_layers(model) if not isinstance(m, nn.MultiheadAttention)]
    edges = {weighted[0]: "first", weighted[-1]: "last"} if weighted else {}
    kept = []
    for name, module in chosen:
        if name in edges:
            report.skip(name, module, f"{edges[name]} weighted layer kept full precision "
                                      "(keep_first_last=True)")
        else:
            kept.append((name, module))
    if not kept:
        raise ValueError(f"{verb}: no layer to act on: the first and last weighted layers stay "
                         "full precision; pass keep_first_last=False to include them")
    return kept
