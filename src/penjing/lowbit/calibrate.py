"""Re-estimate BatchNorm statistics for the weights the model will be evaluated with.

Stochastic BinaryConnect trains with a fresh random sign per step, so the BatchNorm running
statistics describe activations of *random* binary weights; evaluation uses the
deterministic sign, whose activations have other statistics. On the SmallResNet this
mismatch alone costs ~50 points of accuracy; one pass over the training data with the
deterministic weights (no gradient, BatchNorm layers accumulating a plain average) fixes it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: Dataset | DataLoader, batch_size: int = 256) -> nn.Module:
    """Recompute every BatchNorm's running mean/var over ``data`` with the eval-mode weights.

    Only the BatchNorm layers run in training mode (dropout and the stochastic binary sign
    stay in their eval behaviour: :class:`~penjing.lowbit.BinaryWeight` samples only when
    gradients are enabled). Returns ``model`` in eval mode; a model without BatchNorm is
    returned unchanged.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the whole pass
        m.train()
    for x, *_ in loader:
        model(x.to(device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
        m.eval()
    return model
