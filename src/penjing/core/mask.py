"""The one weight mask: ``W = M * V`` as a parametrization (pruning, DSD, anything that zeroes
weights).

``V`` (the dense original) stays trainable; ``M`` is a 0/1 *buffer*, so it is saved in the
model's ``state_dict`` and every forward of the one training loop multiplies by it: a masked
weight gets no gradient and stays zero. A mask does not change how many bits a kept weight
needs, so it sets no ``bits``. :func:`penjing.core.params.bake` turns ``M * V`` into a plain
tensor once done.

``owner`` says which method put a mask there (``"prune"``, ``"dsd"``), so that one method can
remove its own mask (DSD's re-dense phase) without touching another's.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from penjing.core.params import _own_class, attach, parametrizations


class Mask(nn.Module):
    """``W = M * V`` with a boolean mask ``M`` (a buffer of the weight's shape)."""

    def __init__(self, mask: torch.Tensor, owner: str = "prune"):
        super().__init__()
        self.owner = owner
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask

    def extra_repr(self) -> str:
        return f"kept={int(self.mask.sum())}/{self.mask.numel()}, owner={self.owner}"


def get_mask(module: nn.Module, owner: str | None = None, name: str = "weight") -> Mask | None:
    """The :class:`Mask` on ``module.<name>`` (of ``owner`` when given), or ``None``."""
    return next((p for p in parametrizations(module, name)
                 if isinstance(p, Mask) and (owner is None or p.owner == owner)), None)


def current_mask(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The boolean mask in force on ``module.<name>``: the AND of every mask on it (all ones
    when it has none)."""
    weight = getattr(module, name)
    out = torch.ones_like(weight, dtype=torch.bool)
    for p in parametrizations(module, name):
        if isinstance(p, Mask):
            out &= p.mask.to(out.device)
    return out


@torch.no_grad()
def apply_mask(module: nn.Module, mask: torch.Tensor, owner: str = "prune") -> Mask:
    """Set ``module``'s ``owner`` mask to ``mask`` AND the mask already there (a mask never
    revives a weight), attaching a :class:`Mask` on first use; returns it."""
    mask = mask.to(torch.bool)
    found = get_mask(module, owner)
    if found is None:
        found = Mask(mask.to(module.weight.device), owner)
        # The mask goes first so that later representations (sharing, quantization) see M * V.
        attach(module, found)
    else:
        found.mask.logical_and_(mask.to(found.mask.device))
    return found


def remove_mask(module: nn.Module, owner: str, name: str = "weight") -> bool:
    """Remove ``owner``'s mask from ``module.<name>``, keeping every other parametrization; the
    weight keeps the value of the dense original under it. Returns whether one was there."""
    current = parametrizations(module, name)
    if not any(isinstance(p, Mask) and p.owner == owner for p in current):
        return False
    kept = [p for p in current if not (isinstance(p, Mask) and p.owner == owner)]
    _own_class(module)
    parametrize.remove_parametrizations(module, name, leave_parametrized=False)
    for p in kept:
        parametrize.register_parametrization(module, name, p)
    return True
