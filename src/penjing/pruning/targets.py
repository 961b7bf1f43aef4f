"""Which layers a :class:`PruneConfig` prunes, and at which sparsity each."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from penjing.core.select import select
from penjing.pruning.config import PruneConfig


@dataclass
class Target:
    """One layer to prune: its name, the module and its final sparsity (``None``: quality)."""

    name: str
    module: nn.Module
    sparsity: float | None

    @property
    def label(self) -> str:
        return self.name or "(root)"


def _warn(message: str) -> None:
    warnings.warn(f"penjing.prune: {message}", UserWarning, stacklevel=4)


def select_targets(model: nn.Module, config: PruneConfig) -> list[Target]:
    """The selected layers that have a prunable weight, each with its target sparsity.

    A selected leaf module without a weight (ReLU, pooling...) or with a 1-D one (BatchNorm's
    per-channel scale) is skipped with a warning; containers are passed over silently (their
    weighted children are selected on their own).
    """
    weighted: list[tuple[str, nn.Module]] = []
    for name, module in select(model, config.layers, exclude=config.exclude):
        label = name or "(root)"
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            if not any(True for _ in module.children()):
                _warn(f"skipping {label} ({type(module).__name__}): it has no weight to prune")
            continue
        if weight.dim() < 2:
            _warn(f"skipping {label} ({type(module).__name__}): its weight is 1-D (one scale per "
                  "channel); prune the layer before it with granularity='channel' instead")
            continue
        weighted.append((name, module))
    if not weighted:
        raise ValueError(f"no layer to prune: layers={config.layers!r} (exclude={config.exclude!r}) "
                         f"selects no module with a weight in {type(model).__name__}")
    if not isinstance(config.sparsity, dict):
        return [Target(n, m, config.sparsity) for n, m in weighted]
    # Per-layer sparsities: each key is a selector (glob, type name...); the first key that
    # selects a layer gives its sparsity, and layers no key selects stay dense.
    by_key = [(set(n for n, _ in select(model, key)), value) for key, value in config.sparsity.items()]
    targets = []
    for name, module in weighted:
        value = next((v for names, v in by_key if name in names), None)
        if value is not None:
            targets.append(Target(name, module, value))
    if not targets:
        raise ValueError(f"no key of the per-layer sparsity dict {sorted(config.sparsity)} matches a "
                         f"selected layer ({', '.join(n or '(root)' for n, _ in weighted)})")
    return targets


def n_m_targets(targets: list[Target], m: int) -> list[Target]:
    """Drop (with a warning) layers whose input dimension is not a multiple of ``m``."""
    kept = []
    for t in targets:
        size = t.module.weight.shape[1]
        if size % m:
            _warn(f"skipping {t.label}: its input dimension {size} is not a multiple of M={m}")
        else:
            kept.append(t)
    if not kept:
        raise ValueError(f"no selected layer has an input dimension that is a multiple of M={m}")
    return kept
