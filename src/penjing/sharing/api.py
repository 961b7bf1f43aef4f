"""``pj.share(model, config)``: cluster every selected layer's weights and attach ``W = C[I]``."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from penjing.core.config import Run, verb
from penjing.core.layers import pick_layers
from penjing.core.override import per_layer
from penjing.core.params import attach, parametrizations
from penjing.core.validate import check_model, tied_groups
from penjing.sharing.config import ShareConfig, default_bits
from penjing.sharing.kmeans import kmeans_1d
from penjing.sharing.shared import SharedWeight


def _padding_row(module: nn.Module, name: str, layer: str) -> None:
    """An embedding's padding row must be zero: torch never trains it, but a codebook entry
    would move with its other members, so it is kept exactly zero (index 0) instead."""
    padding = getattr(module, "padding_idx", None)
    if name != "weight" or padding is None or not isinstance(module, nn.Embedding | nn.EmbeddingBag):
        return
    if torch.any(getattr(module, name).detach()[padding] != 0):
        raise ValueError(f"share: embedding {layer or '(root)'}'s padding row (padding_idx={padding}) "
                         "is not zero: torch never trains it, but codebook values move in "
                         "fine-tuning; zero that row first (torch initializes it to zero) or "
                         "exclude the layer")


def share_layer(module: nn.Module, bits: int, *, init: str = "linear", max_iter: int = 100,
                seed: int = 0, name: str = "weight", relocate_empty: bool = True,
                layer: str = "") -> SharedWeight:
    """Cluster ``module.<name>``'s nonzero values into ``2^bits`` centroids and attach the
    sharing parametrization on top of whatever is already there (e.g. a pruning mask)."""
    if any(isinstance(p, SharedWeight) for p in parametrizations(module, name)):
        raise ValueError(f"{type(module).__name__} {name} is already shared; bake or remove it first")
    _padding_row(module, name, layer)
    with torch.no_grad():
        w = getattr(module, name).detach()
        if not torch.isfinite(w).all():
            raise ValueError(f"share: {layer or type(module).__name__}.{name} has NaN/Inf values")
        # Zeros (pruned, or zero in the current value) are not clustered and stay zero.
        nonzero = w != 0
        centroids, labels = kmeans_1d(w[nonzero], 2 ** bits, init=init, max_iter=max_iter, seed=seed,
                                      relocate_empty=relocate_empty)
        index = torch.zeros(w.shape, dtype=torch.int64, device=w.device)
        index[nonzero] = labels + 1
    p = SharedWeight(centroids.to(w.dtype), index, bits)
    attach(module, p, name=name)
    return p


def _supports(name: str, module: nn.Module) -> str | None:
    if any(isinstance(p, SharedWeight) for p in parametrizations(module)):
        return "its weight is already shared (bake it first to share again)"
    return None


@verb(ShareConfig)
def share(model: nn.Module, config: ShareConfig, run: Run) -> None:
    """Weight sharing (Deep Compression): per selected layer (Linear, conv, embedding, the
    q/k/v/out projections of attention), k-means over the nonzero weights into ``2^bits``
    centroids; each weight becomes a ``bits``-bit index into the codebook, zeros stay zero.

    The centroids are trainable: fine-tune with :func:`penjing.fit` afterwards (each centroid
    gets the sum of its members' gradients). A weight tied between modules gets one codebook,
    shared by all of them, so the tie holds through fine-tuning. Returns ``model``.
    """
    check_model(model, "share")
    layers = pick_layers(model, config.layers, config.exclude, verb="share", supports=_supports,
                         report=run.report)
    check_model(model, "share", layers)
    bits = (per_layer(config.bits, layers, "ShareConfig.bits") if config.bits is not None
            else {name: default_bits(module) for name, module in layers})
    bias_bits = (per_layer(config.bias_bits, layers, "ShareConfig.bias_bits", default=None)
                 if config.bias_bits is not None else {})
    options = dict(init=config.init, max_iter=config.max_iter, seed=config.seed,
                   relocate_empty=config.relocate_empty)
    for (name, module), tied in tied_groups(model, layers):
        if name not in bits:
            run.report.skip(name, module, "no key of ShareConfig.bits matches it")
            continue
        p = share_layer(module, bits[name], name="weight", layer=name, **options)
        for other_name, other in tied:
            parametrize.register_parametrization(other, "weight", p)
            run.report.note(f"{other_name} holds the same weight as {name}: one codebook, shared")
        detail = ""
        b = bias_bits.get(name)
        if b and isinstance(getattr(module, "bias", None), torch.Tensor):
            share_layer(module, b, name="bias", layer=name, **options)
            detail = f"bias {b}-bit"
        used = int(p.index.unique().numel()) - int(bool((p.index == 0).any()))
        run.report.touch(name, module, "fp32 dense", f"{bits[name]}-bit codebook",
                         detail=f"{used} of {2 ** bits[name]} centroids used" + (f"; {detail}" if detail else ""))
