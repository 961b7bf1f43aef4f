"""The pruning mask as a parametrization: ``W = M * V``.

``V`` (the dense original) stays trainable; ``M`` is a 0/1 *buffer*, so it is saved in the
model's ``state_dict`` and every forward of the one training loop multiplies by it: a pruned
weight gets no gradient and stays zero. Pruning does not change how many bits a kept weight
needs, so the mask sets no ``bits``. :func:`penjing.core.params.bake` turns ``M * V`` into a
plain tensor once pruning is done.
"""

from __future__ import annotations

import torch
from torch import nn

from penjing.core.params import attach, parametrizations


class Mask(nn.Module):
    """``W = M * V`` with a boolean mask ``M`` (a buffer of the weight's shape)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask

    def extra_repr(self) -> str:
        return f"kept={int(self.mask.sum())}/{self.mask.numel()}"


def get_mask(module: nn.Module) -> Mask | None:
    """The :class:`Mask` on ``module.weight``, or ``None``."""
    return next((p for p in parametrizations(module) if isinstance(p, Mask)), None)


def current_mask(module: nn.Module) -> torch.Tensor:
    """The boolean mask in force on ``module.weight`` (all ones when the layer has none)."""
    found = get_mask(module)
    if found is not None:
        return found.mask
    return torch.ones_like(module.weight, dtype=torch.bool)


@torch.no_grad()
def apply_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Set ``module``'s mask to ``mask`` AND the mask already there (pruning never revives a
    weight), attaching a :class:`Mask` on first use."""
    mask = mask.to(torch.bool)
    found = get_mask(module)
    if found is None:
        # The mask goes first so that later representations (sharing, quantization) see M * V.
        attach(module, Mask(mask.to(module.weight.device)))
    else:
        found.mask.logical_and_(mask.to(found.mask.device))
