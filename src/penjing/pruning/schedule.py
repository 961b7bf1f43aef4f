"""When masks are computed: one round at a target sparsity, the iterative schedule's rounds,
and the gradual polynomial schedule as a training callback."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from penjing.core.mask import apply_mask, current_mask
from penjing.core.params import parametrizations
from penjing.core.report import Report
from penjing.pruning.config import PruneConfig
from penjing.pruning.masks import global_masks, n_m_mask, quality_mask, sparsity_mask
from penjing.pruning.targets import Target, select_targets
from penjing.train import Callback


def round_sparsity(final: float, fraction: float) -> float:
    """Sparsity after ``fraction`` of the iterative rounds: the kept fraction shrinks
    geometrically, ``kept_r = kept_final ** fraction``, so every round removes the same share of
    the surviving weights (gentle early, when the network has most to lose)."""
    return 1 - (1 - final) ** fraction


def polynomial_sparsity(step: int, final: float, initial: float, begin: int, end: int) -> float:
    """Zhu & Gupta (2017): ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3`` on [t0, t1]."""
    if step <= begin:
        return initial
    if step >= end:
        return final
    progress = (step - begin) / (end - begin)
    return final + (initial - final) * (1 - progress) ** 3


def _apply(target: Target, mask: torch.Tensor) -> None:
    """Mask ``target`` and share the very same :class:`Mask` with every module tied to it, so a
    tied weight stays one tensor (one mask, one gradient)."""
    found = apply_mask(target.module, mask)
    for _, other in target.tied:
        if not any(p is found for p in parametrizations(other)):
            parametrize.register_parametrization(other, "weight", found)


def mask_round(targets: list[Target], config: PruneConfig, fraction: float = 1.0,
               sparsity: float | None = None) -> None:
    """Prune every target once: to ``sparsity`` if given, else to its sparsity (or quality) of
    round ``fraction`` of the schedule. Masks only ever lose weights."""
    nm = config.n_m
    if nm is not None:
        for t in targets:
            _apply(t, n_m_mask(t.module, *nm))
        return
    if config.scope == "global":
        modules = {t.name: t.module for t in targets}
        alive = {t.name: current_mask(t.module) for t in targets}
        if config.quality is not None:
            masks = global_masks(modules, None, config.quality * fraction, alive)
        else:
            level = sparsity if sparsity is not None else round_sparsity(config.sparsity, fraction)
            masks = global_masks(modules, level, None, alive)
        for t in targets:
            _apply(t, masks[t.name])
        return
    for t in targets:
        if t.sparsity is None:
            mask = quality_mask(t.module, config.quality * fraction, current_mask(t.module), t.name)
        else:
            level = sparsity if sparsity is not None else round_sparsity(t.sparsity, fraction)
            mask = sparsity_mask(t.module, level, t.name)
        _apply(t, mask)


class PolynomialPruning(Callback):
    """Gradual pruning during training (Zhu & Gupta 2017), as a :class:`penjing.train.Callback`.

    Pass it to :func:`penjing.train.fit`: from step ``begin * total_steps`` to
    ``end * total_steps`` the sparsity of every selected layer rises along a cubic from
    ``config.initial_sparsity`` to ``config.sparsity``; masks are recomputed every
    ``config.frequency`` steps, and the training in between lets the network recover.
    """

    def __init__(self, model: nn.Module, config: PruneConfig, total_steps: int,
                 targets: list[Target] | None = None):
        if config.schedule != "polynomial":
            raise ValueError(f"PolynomialPruning needs schedule='polynomial', got {config.schedule!r}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.config = config
        self.targets = targets if targets is not None else select_targets(model, config, Report("prune"))
        self.begin = round(config.begin * total_steps)
        self.end = max(round(config.end * total_steps), self.begin + 1)
        self.history: list[tuple[int, float]] = []

    def sparsity_at(self, step: int) -> float:
        c = self.config
        return polynomial_sparsity(step, c.sparsity, c.initial_sparsity, self.begin, self.end)

    def _update(self, step: int) -> None:
        level = self.sparsity_at(step)
        mask_round(self.targets, self.config, sparsity=level)
        self.history.append((step, level))

    def on_train_begin(self, model: nn.Module) -> None:
        self._update(0)

    def on_step_end(self, model: nn.Module, step: int, loss: float) -> None:
        if self.begin <= step <= self.end and ((step - self.begin) % self.config.frequency == 0
                                               or step == self.end):
            self._update(step)

    def on_train_end(self, model: nn.Module) -> None:
        # Training shorter than the schedule still ends at the target sparsity.
        if not self.history or self.history[-1][1] < self.config.sparsity:
            self._update(self.end)
