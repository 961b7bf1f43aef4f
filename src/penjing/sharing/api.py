"""``share(model, config)``: cluster every selected layer's weights and attach ``W = C[I]``."""

from __future__ import annotations

import torch
from torch import nn

from penjing.core.params import attach, parametrizations
from penjing.core.select import WEIGHTED_TYPES, select
from penjing.sharing.config import ShareConfig
from penjing.sharing.kmeans import kmeans_1d
from penjing.sharing.shared import SharedWeight


def share_layer(module: nn.Module, bits: int, *, init: str = "linear", max_iter: int = 100,
                seed: int = 0, name: str = "weight", relocate_empty: bool = True) -> SharedWeight:
    """Cluster ``module.<name>``'s nonzero values into ``2^bits`` centroids and attach the
    sharing parametrization on top of whatever is already there (e.g. a pruning mask)."""
    if any(isinstance(p, SharedWeight) for p in parametrizations(module, name)):
        raise ValueError(f"{type(module).__name__} {name} is already shared; bake or remove it first")
    with torch.no_grad():
        w = getattr(module, name).detach()
        # Zeros (pruned, or zero in the current value) are not clustered and stay zero.
        nonzero = w != 0
        centroids, labels = kmeans_1d(w[nonzero], 2 ** bits, init=init, max_iter=max_iter, seed=seed,
                                      relocate_empty=relocate_empty)
        index = torch.zeros(w.shape, dtype=torch.int64, device=w.device)
        index[nonzero] = labels + 1
    p = SharedWeight(centroids.to(w.dtype), index, bits)
    attach(module, p, name=name)
    return p


def share(model: nn.Module, config: ShareConfig | None = None) -> nn.Module:
    """Weight sharing (Deep Compression): per selected layer, k-means over the nonzero weights
    into ``2^bits`` centroids; each weight becomes a ``bits``-bit index into the codebook.

    The centroids are trainable: fine-tune with :func:`penjing.fit` afterwards (each centroid
    gets the sum of its members' gradients). Returns ``model`` (changed in place).
    """
    config = config or ShareConfig()
    chosen = [(n, m) for n, m in select(model, config.layers, exclude=config.exclude, types=WEIGHTED_TYPES)]
    if not chosen:
        raise ValueError("share: the selector picked no Linear/Conv layer")
    done = 0
    for name, module in chosen:
        bits = config.bits_for(name, module)
        if bits is None:
            continue
        options = dict(init=config.init, max_iter=config.max_iter, seed=config.seed,
                       relocate_empty=config.relocate_empty)
        share_layer(module, bits, **options)
        if config.bias_bits and isinstance(getattr(module, "bias", None), torch.Tensor):
            share_layer(module, config.bias_bits, name="bias", **options)
        done += 1
    if not done:
        raise ValueError(f"share: bits={config.bits} names none of the selected layers "
                         f"({', '.join(n for n, _ in chosen)})")
    return model
