"""Which layers a :class:`PruneConfig` prunes, and at which sparsity each (the one layer rule of
:func:`penjing.core.layers.pick_layers` and the one override rule of :func:`per_layer`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from penjing.core.layers import pick_layers, weight_layout
from penjing.core.override import per_layer
from penjing.core.report import Report
from penjing.core.select import type_name
from penjing.core.validate import check_model, tied_groups
from penjing.pruning.config import PruneConfig

_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


@dataclass
class Target:
    """One layer to prune: its name, the module, its final sparsity (``None``: quality) and
    the other modules holding the same (tied) weight, which the mask is shared with."""

    name: str
    module: nn.Module
    sparsity: float | None
    tied: tuple[tuple[str, nn.Module], ...] = ()

    @property
    def label(self) -> str:
        return self.name or "(root)"


def supports(config: PruneConfig):
    """``supports(name, module)`` for :func:`pick_layers`: the reason a layer cannot be pruned
    as ``config`` says, or ``None``."""
    nm = config.n_m

    def check(name: str, module: nn.Module) -> str | None:
        if config.structured:
            if isinstance(module, _EMBEDDINGS):
                return ("structured pruning removes output channels of conv/Linear layers; an "
                        "embedding table is kept (prune it unstructured or N:M)")
            if not isinstance(module, _ConvNd | nn.Linear):
                return f"structured pruning handles conv and Linear layers, not {type_name(module)}"
            return None
        if nm is not None:
            size = module.weight.shape[weight_layout(module).in_axis]
            if size % nm[1]:
                return f"its input dimension {size} is not a multiple of M={nm[1]}"
        return None

    return check


def select_targets(model: nn.Module, config: PruneConfig, report: Report) -> list[Target]:
    """The layers ``config`` prunes, each once (a weight tied between modules is one target),
    with its sparsity; skips recorded in ``report``."""
    check_model(model, "prune")
    layers = pick_layers(model, config.layers, config.exclude, verb="prune",
                         supports=supports(config), report=report)
    check_model(model, "prune", layers)
    groups = tied_groups(model, layers)
    if isinstance(config.sparsity, Mapping):
        amounts = per_layer(config.sparsity, layers, "PruneConfig.sparsity")
    else:
        sparsity = None if config.quality is not None or config.sparsity == "auto" else config.sparsity
        amounts = {name: sparsity for name, _ in layers}
    targets = []
    for (name, module), tied in groups:
        if name not in amounts:
            report.skip(name, module, "no key of PruneConfig.sparsity matches it")
            continue
        for other, _ in tied:
            report.note(f"{other} holds the same weight as {name}: pruned once, with one mask")
        targets.append(Target(name, module, amounts[name], tuple(tied)))
    if not targets:
        raise ValueError("prune: no layer to prune: no key of PruneConfig.sparsity "
                         f"{sorted(map(str, config.sparsity))} matches a selected layer")
    return targets


def count(targets: list[Target]) -> tuple[int, int]:
    """``(weights, nonzero weights)`` over the targets (a tied weight counted once)."""
    params = sum(t.module.weight.numel() for t in targets)
    nonzeros = sum(int(torch.count_nonzero(t.module.weight.detach())) for t in targets)
    return params, nonzeros
