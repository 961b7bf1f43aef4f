"""Plots people would rather look at than read. Every function writes one PNG and returns it."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from penjing.core.stats import layer_stats  # noqa: E402


def _all_weights(model: nn.Module) -> torch.Tensor:
    parts = []
    for row in layer_stats(model):
        module = model.get_submodule("" if row.name == "(root)" else row.name)
        parts.append(module.weight.detach().flatten().float())
    return torch.cat(parts) if parts else torch.zeros(0)


def weight_histogram(models: dict[str, nn.Module], path: str | Path, *, drop_zeros: bool = True,
                     bins: int = 200) -> Path:
    """Histogram of all weight values of each model (e.g. before/after pruning: the bimodal
    picture once small weights are gone; after sharing: spikes at the centroids)."""
    path = Path(path)
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.2), squeeze=False)
    for ax, (label, model) in zip(axes[0], models.items(), strict=True):
        w = _all_weights(model)
        nonzero = w[w != 0] if drop_zeros else w
        ax.hist(nonzero.numpy(), bins=bins, color="#3b7dd8")
        ax.set_title(f"{label}: {len(nonzero):,} of {len(w):,} nonzero")
        ax.set_xlabel("weight value")
        ax.set_ylabel("count")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sparsity_per_layer(model: nn.Module, path: str | Path) -> Path:
    """Bar chart of the fraction of weights kept in every layer."""
    path = Path(path)
    rows = layer_stats(model)
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(rows) + 2), 3.2))
    ax.bar([r.name for r in rows], [100 * r.kept for r in rows], color="#2a9d8f")
    ax.set_ylabel("weights kept (%)")
    ax.set_ylim(0, 100)
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
