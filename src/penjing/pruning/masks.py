"""Computing masks: unstructured (per-layer or global, by target sparsity or Han's quality
threshold) and N:M. Scores are taken on the *effective* weight ``M * V``, so weights pruned in
an earlier round score zero and are the first to stay pruned.

Two rules hold for every mask:

* an embedding's ``padding_idx`` row is never pruned (torch never trains it: whatever it holds,
  usually zeros, is what padding tokens look up), and it is not counted in the sparsity;
* a layer keeps at least one weight: a mask that would remove all of a layer's weights is
  refused with the layer's name (such a layer outputs a constant and cuts the network).
"""

from __future__ import annotations

import torch
from torch import nn

from penjing.core.layers import weight_layout


def scores(module: nn.Module) -> torch.Tensor:
    """Importance of each weight: its magnitude (L1 and L2 of a single weight are both ``|w|``)."""
    return module.weight.detach().abs().float()


def prunable(module: nn.Module) -> torch.Tensor:
    """Boolean tensor of the weights a mask may remove (all but an embedding's padding row)."""
    out = torch.ones_like(module.weight, dtype=torch.bool)
    padding = getattr(module, "padding_idx", None)
    if isinstance(module, nn.Embedding | nn.EmbeddingBag) and padding is not None:
        out[padding] = False
    return out


def _refuse_empty(mask: torch.Tensor, free: torch.Tensor, name: str, what: str) -> torch.Tensor:
    if free.any() and not (mask & free).any():
        raise ValueError(f"prune: {what} would remove every weight of layer {name or '(root)'} "
                         f"({int(free.sum())} weights); a layer keeps at least one weight")
    return mask


def keep_top(score: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask keeping the ``keep`` highest scores (ties broken by position)."""
    flat = score.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if keep > 0:
        mask[torch.topk(flat, keep, sorted=False).indices] = True
    return mask.view_as(score)


def sparsity_mask(module: nn.Module, sparsity: float, name: str = "") -> torch.Tensor:
    """Mask removing ``round(sparsity * n)`` of the ``n`` prunable weights, by magnitude."""
    free = prunable(module)
    n = int(free.sum())
    drop = round(sparsity * n)
    if n and drop >= n:
        raise ValueError(f"prune: sparsity {sparsity:g} would remove every weight of layer "
                         f"{name or '(root)'} ({n} weights); a layer keeps at least one weight")
    score = scores(module).masked_fill(~free, float("inf"))
    return keep_top(score, score.numel() - drop)


def quality_mask(module: nn.Module, quality: float, alive: torch.Tensor, name: str = "") -> torch.Tensor:
    """Han et al. (2015): keep ``|w| >= quality * std`` of the layer's surviving weights."""
    free = prunable(module)
    survivors = module.weight.detach()[alive & free]
    if survivors.numel() < 2:
        return alive.clone()
    threshold = quality * survivors.float().std()
    mask = (scores(module) >= threshold) | ~free
    return _refuse_empty(mask, free, name, f"quality {quality:g} (threshold {float(threshold):.3g})")


def global_masks(modules: dict[str, nn.Module], sparsity: float | None, quality: float | None,
                 alive: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One threshold over every layer in ``modules``: the ``sparsity`` fraction of all their
    prunable weights with the smallest magnitude, or ``quality`` x the std of all survivors."""
    free = {name: prunable(m) for name, m in modules.items()}
    all_scores = {name: scores(m).masked_fill(~free[name], float("inf")) for name, m in modules.items()}
    if quality is not None:
        survivors = torch.cat([modules[n].weight.detach()[alive[n] & free[n]].flatten() for n in modules])
        threshold = quality * survivors.float().std()
        masks = {name: s >= threshold for name, s in all_scores.items()}
        what = f"the global quality {quality:g} (threshold {float(threshold):.3g})"
    else:
        flat = torch.cat([s.flatten() for s in all_scores.values()])
        total = int(sum(int(f.sum()) for f in free.values()))
        drop = round(sparsity * total)
        if total and drop >= total:
            raise ValueError(f"prune: sparsity {sparsity:g} would remove every weight "
                             f"({total} weights); a layer keeps at least one weight")
        kept = keep_top(flat, flat.numel() - drop)
        masks, start = {}, 0
        for name, s in all_scores.items():
            masks[name] = kept[start:start + s.numel()].view_as(s)
            start += s.numel()
        what = f"the global sparsity {sparsity:g}"
    return {name: _refuse_empty(m, free[name], name, what) for name, m in masks.items()}


def n_m_mask(module: nn.Module, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` largest of every ``m`` consecutive weights along the input dimension.

    The input axis is the layer's own (:func:`penjing.core.layers.weight_layout`): ``in`` of a
    Linear ``(out, in)``, the input channels of a conv ``(out, in, kh, kw)`` at each kernel
    position (the layout sparse tensor cores use), axis 0 of a ConvTranspose ``(in, out, ...)``,
    the embedding dimension of an embedding table. An embedding's padding row is kept whole.
    """
    weight = scores(module)
    axis = weight_layout(module).in_axis
    moved = weight.movedim(axis, -1)  # the input axis last: groups of m are contiguous
    if moved.shape[-1] % m:
        raise ValueError(f"input dimension {moved.shape[-1]} is not a multiple of M={m}")
    groups = moved.reshape(-1, m)
    top = torch.topk(groups, n, dim=1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, top, True)
    return mask.view(moved.shape).movedim(-1, axis) | ~prunable(module)
