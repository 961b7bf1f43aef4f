"""Per-layer sensitivity measured on data, to weight each layer's error in the budget.

A relative error of 10% in the first layer of a network can cost far more accuracy than the
same error in a wide middle layer. For each candidate we factorise that layer alone at a probe
rank -- the smallest whose relative error is at most :data:`PROBE_ERROR` (the same error level
in every layer, so the weights compare like with like) -- measure the increase of the
loss (cross-entropy by default, or the user's ``loss_fn``) on a few hundred samples, and divide by the relative squared error of
that probe: the loss paid per unit of error. The weights are normalised to mean 1, so an unweighted and a weighted budget
speak the same units.
"""

from __future__ import annotations

import torch
from torch import nn

from penjing.core.batch import batch_size_of, batches, default_loss, run_forward, to_device
from penjing.core.select import swap
from penjing.low_rank.plan import Candidate, State

#: The smallest weight a layer gets (relative to the mean of 1): a layer whose probe barely
#: moved the loss still pays something for its error, or the budget would strip it to rank 1
#: on the strength of one small measurement.
FLOOR = 0.1

#: Relative (not squared) Frobenius error at which each layer is probed.
PROBE_ERROR = 0.5


def _samples(data, samples: int) -> list:
    """The first batches of ``data`` holding at least ``samples`` samples (all of it if fewer)."""
    out, seen = [], 0
    for batch in batches(data, batch_size=min(samples, 512)):
        out.append(batch)
        seen += batch_size_of(batch)
        if seen >= samples:
            break
    if not out:
        raise ValueError("sensitivity: the data yielded no batch")
    return out


@torch.no_grad()
def _loss(model: nn.Module, data: list, forward_fn, loss_fn) -> float:
    """Mean loss over ``data`` (weighted by batch size)."""
    total = count = 0.0
    for batch in data:
        n = batch_size_of(batch)
        total += float(loss_fn(run_forward(model, batch, forward_fn), batch)) * n
        count += n
    return total / count


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
def measure(model: nn.Module, candidates: list[Candidate], data, *, samples: int = 512,
            factorise=None, forward_fn=None, loss_fn=None) -> dict[str, float]:
    """Loss increase per unit of relative squared error for each candidate; sets
    ``cand.weight_sensitivity`` and returns the weights by layer name.

    ``data`` is anything the batch protocol reads (:mod:`penjing.core.batch`); the first
    ``samples`` samples are used, with ``forward_fn(model, batch)`` and ``loss_fn(output,
    batch)`` (default: cross-entropy against the batch's target). ``factorise(cand, state)``
    builds the factorised module (passed in by the caller, which knows the method options).
    The model's train/eval mode is restored.
    """
    loss_fn = loss_fn or default_loss
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    probe = [to_device(b, device) for b in _samples(data, samples)]
    was_training = model.training
    model.eval()
    raw: dict[str, float] = {}
    try:
        base = _loss(model, probe, forward_fn, loss_fn)
        for cand in candidates:
            state = probe_state(cand)
            error = cand.error(state)
            if error <= 0:
                raw[cand.name] = 0.0
                continue
            new = factorise(cand, state)
            old = swap(model, cand.name, new)
            try:
                raw[cand.name] = max(0.0, _loss(model, probe, forward_fn, loss_fn) - base) / error
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
