"""Per-layer sensitivity measured on data, to weight each layer's error in the budget.

A relative error of 10% in the first layer of a network can cost far more accuracy than the
same error in a wide middle layer. For each candidate we factorise that layer alone at a probe
rank -- the smallest whose relative error is at most :data:`PROBE_ERROR` (the same error level
in every layer, so the weights compare like with like) -- measure the increase of the
cross-entropy loss on a few hundred samples, and divide by the relative squared error of
that probe: the loss paid per unit of error. The weights are normalised to mean 1, so an unweighted and a weighted budget
speak the same units.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from penjing.core.select import swap
from penjing.low_rank.plan import Candidate, State

#: The smallest weight a layer gets (relative to the mean of 1): a layer whose probe barely
#: moved the loss still pays something for its error, or the budget would strip it to rank 1
#: on the strength of one small measurement.
FLOOR = 0.1

#: Relative (not squared) Frobenius error at which each layer is probed.
PROBE_ERROR = 0.5


@torch.no_grad()
def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(F.cross_entropy(model(x), y))


def probe_state(cand: Candidate) -> State:
    """The smallest state whose relative error is at most :data:`PROBE_ERROR` (Tucker-2: grown
    one singular value at a time, in whichever mode removes more error)."""
    state = cand.min_state()
    while cand.error(state) > PROBE_ERROR**2:
        options = cand.next_states(state)
        if not options:
            break
        state = min(options, key=cand.error)
    return state


@torch.no_grad()
def measure(model: nn.Module, candidates: list[Candidate], data: Dataset, *, samples: int = 512,
            factorise=None) -> dict[str, float]:
    """Loss increase per unit of relative squared error for each candidate; sets
    ``cand.weight_sensitivity`` and returns the weights by layer name.

    ``factorise(cand, state)`` builds the factorised module (passed in by the caller, which
    knows the method options).
    """
    n = min(samples, len(data))
    x, y = next(iter(torch.utils.data.DataLoader(data, batch_size=n, shuffle=False)))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x, y = x.to(device), y.to(device)
    was_training = model.training
    model.eval()
    base = _loss(model, x, y)
    raw: dict[str, float] = {}
    try:
        for cand in candidates:
            state = probe_state(cand)
            error = cand.error(state)
            if error <= 0:
                raw[cand.name] = 0.0
                continue
            new = factorise(cand, state)
            new.eval()
            old = swap(model, cand.name, new)
            try:
                raw[cand.name] = max(0.0, _loss(model, x, y) - base) / error
            finally:
                swap(model, cand.name, old)
    finally:
        model.train(was_training)
    mean = sum(raw.values()) / len(raw) if raw else 0.0
    weights = {}
    for cand in candidates:
        weight = raw[cand.name] / mean if mean > 0 else 1.0
        cand.weight_sensitivity = weights[cand.name] = max(FLOOR, weight)
    return weights
