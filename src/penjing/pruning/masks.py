"""Computing masks: unstructured (per-layer or global, by target sparsity or Han's quality
threshold) and N:M. Scores are taken on the *effective* weight ``M * V``, so weights pruned in
an earlier round score zero and are the first to stay pruned."""

from __future__ import annotations

import torch
from torch import nn


def scores(module: nn.Module) -> torch.Tensor:
    """Importance of each weight: its magnitude (L1 and L2 of a single weight are both ``|w|``)."""
    return module.weight.detach().abs().float()


def keep_top(score: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask keeping the ``keep`` highest scores (ties broken by position)."""
    flat = score.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if keep > 0:
        mask[torch.topk(flat, keep, sorted=False).indices] = True
    return mask.view_as(score)


def sparsity_mask(module: nn.Module, sparsity: float) -> torch.Tensor:
    """Mask removing ``round(sparsity * numel)`` weights of ``module`` by magnitude."""
    score = scores(module)
    return keep_top(score, score.numel() - round(sparsity * score.numel()))


def quality_mask(module: nn.Module, quality: float, alive: torch.Tensor) -> torch.Tensor:
    """Han et al. (2015): keep ``|w| >= quality * std`` of the layer's surviving weights."""
    score = scores(module)
    survivors = module.weight.detach()[alive]
    if survivors.numel() < 2:
        return alive.clone()
    return score >= quality * survivors.float().std()


def global_masks(modules: dict[str, nn.Module], sparsity: float | None, quality: float | None,
                 alive: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One threshold over every layer in ``modules``: the ``sparsity`` fraction of all their
    weights with the smallest magnitude, or ``quality`` x the std of all surviving weights."""
    all_scores = {name: scores(m) for name, m in modules.items()}
    flat = torch.cat([s.flatten() for s in all_scores.values()])
    if quality is not None:
        survivors = torch.cat([modules[n].weight.detach()[alive[n]].flatten() for n in modules])
        threshold = quality * survivors.float().std()
        return {name: s >= threshold for name, s in all_scores.items()}
    keep = flat.numel() - round(sparsity * flat.numel())
    kept = keep_top(flat, keep)
    out, start = {}, 0
    for name, s in all_scores.items():
        out[name] = kept[start:start + s.numel()].view_as(s)
        start += s.numel()
    return out


def n_m_mask(module: nn.Module, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` largest of every ``m`` consecutive weights along the input dimension.

    For a Linear weight ``(out, in)`` the groups run along ``in``; for a conv weight
    ``(out, in, kh, kw)`` along the input channels at each kernel position (the layout sparse
    tensor cores use). ``in`` must be a multiple of ``m``.
    """
    weight = scores(module)
    # Move the input dimension last, so that groups of m are contiguous.
    moved = weight.movedim(1, -1) if weight.dim() > 2 else weight
    if moved.shape[-1] % m:
        raise ValueError(f"input dimension {moved.shape[-1]} is not a multiple of M={m}")
    groups = moved.reshape(-1, m)
    top = torch.topk(groups, n, dim=1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, top, True)
    mask = mask.view(moved.shape)
    return mask.movedim(-1, 1) if weight.dim() > 2 else mask
