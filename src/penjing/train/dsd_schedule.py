"""DSD: Dense-Sparse-Dense training (Han et al. 2017), as a schedule of masks inside ``fit``.

1. *Dense*: train normally.
2. *Sparse*: keep the largest-magnitude ``1 - sparsity`` of each selected layer's weights (a
   mask parametrization, so the pruned weights get no gradient and stay zero) and retrain.
3. *Re-dense*: drop the mask (:func:`penjing.core.params.remove`), restore the pruned
   connections *at zero*, and retrain everything at ``lr * redense_lr_scale`` (the paper: 1/10).

The mask is the one in :mod:`penjing.core.mask` (owner ``"dsd"``), so a pruning mask already
on a layer is kept when DSD drops its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from penjing.core.mask import Mask, get_mask, remove_mask
from penjing.core.params import attach, original, parametrizations
from penjing.core.select import WEIGHTED_TYPES, LayerSelector, select
from penjing.train.callbacks import Callback

PHASES = ("dense", "sparse", "re-dense")


@dataclass(frozen=True)
class DSDConfig:
    """DSD settings.

    ``sparsity``: fraction of each selected layer's weights pruned in the sparse phase.
    ``phases``: shares of the training budget (steps) given to dense, sparse and re-dense.
    ``redense_lr_scale``: learning-rate factor for the re-dense phase.
    ``layers`` / ``exclude``: which layers (a :func:`penjing.core.select` selector; default:
    every Linear/Conv layer).
    """

    sparsity: float = 0.5
    phases: Sequence[float] = (1 / 3, 1 / 3, 1 / 3)
    redense_lr_scale: float = 0.1
    layers: LayerSelector = None
    exclude: LayerSelector = ()

    def __post_init__(self) -> None:
        if not 0.0 < self.sparsity < 1.0:
            raise ValueError(f"DSD sparsity must be in (0, 1), got {self.sparsity}")
        if len(self.phases) != 3 or not all(p > 0 for p in self.phases):
            raise ValueError(f"DSD phases must be three positive shares (dense, sparse, re-dense), "
                             f"got {tuple(self.phases)}")
        if not self.redense_lr_scale > 0:
            raise ValueError(f"redense_lr_scale must be > 0, got {self.redense_lr_scale}")

    def boundaries(self, total_steps: int) -> tuple[int, int]:
        """The steps after which the sparse and the re-dense phases start."""
        if total_steps < 3:
            raise ValueError(f"DSD needs at least 3 training steps (one per phase), got {total_steps}")
        total = sum(self.phases)
        first = round(total_steps * self.phases[0] / total)
        second = round(total_steps * (self.phases[0] + self.phases[1]) / total)
        first = min(max(first, 1), total_steps - 2)
        return first, min(max(second, first + 1), total_steps - 1)


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """0/1 mask zeroing the ``round(sparsity * numel)`` smallest-magnitude entries."""
    k = round(sparsity * weight.numel())
    mask = torch.ones_like(weight)
    if k > 0:
        # A stable sort: ties are broken by position, the same on every run.
        order = weight.detach().abs().flatten().argsort(stable=True)
        mask.view(-1)[order[:k]] = 0
    return mask


def _layers(model: nn.Module, config: DSDConfig) -> list[tuple[str, nn.Module]]:
    chosen = list(select(model, config.layers, exclude=config.exclude, types=WEIGHTED_TYPES))
    if not chosen:
        raise ValueError("DSD selected no layer with a weight; check DSDConfig.layers")
    return chosen


def sparsify(model: nn.Module, config: DSDConfig) -> list[str]:
    """Attach magnitude masks to the selected layers; the pruned weights are set to zero."""
    names = []
    for name, module in _layers(model, config):
        mask = magnitude_mask(module.weight, config.sparsity)
        if not parametrizations(module):
            with torch.no_grad():
                module.weight.mul_(mask)  # the dense tensor itself: zero now, zero when restored
        attach(module, Mask(mask, owner="dsd"))
        names.append(name)
    return names


def densify(model: nn.Module) -> None:
    """Remove the DSD masks; the pruned connections come back at zero."""
    for module in model.modules():
        p = get_mask(module, owner="dsd")
        if p is not None:
            with torch.no_grad():
                # The optimizer's momentum may have moved the hidden entries while masked.
                original(module).mul_(p.mask)
            remove_mask(module, "dsd")


def weight_sparsity(model: nn.Module, config: DSDConfig) -> float:
    """Fraction of zero weights over the layers DSD acts on."""
    zeros = total = 0
    for _, module in _layers(model, config):
        w = module.weight
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / max(total, 1)


def phases_markdown(phases: list[dict]) -> str:
    """The per-phase table of a DSD run (``history["phases"]``) as Markdown."""
    lines = ["| phase | ends at step | test accuracy | weight sparsity |", "|---|---:|---:|---:|"]
    for p in phases:
        acc = "n/a" if p["test_acc"] is None else f"{100 * p['test_acc']:.2f}%"
        lines.append(f"| {p['phase']} | {p['step']} | {acc} | {100 * p['sparsity']:.1f}% |")
    return "\n".join(lines) + "\n"


class DSDSchedule(Callback):
    """The loop's DSD callback: switches phases at step boundaries, records each phase's accuracy.

    It needs the optimizer (to lower the learning rate) and the test set, so ``fit`` builds it;
    """

    def __init__(self, config: DSDConfig, total_steps: int, optimizer: torch.optim.Optimizer,
                 scheduler: Any, measure, log, history: dict):
        self.config = config
        self.boundaries = config.boundaries(total_steps)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.measure = measure  # model -> test accuracy or None
        self.log = log
        self.history = history
        self.phase = 0
        self.last_step = 0
        self.layers: list[str] = []

    def _record(self, model: nn.Module, step: int) -> None:
        entry = {"phase": PHASES[self.phase], "step": step, "test_acc": self.measure(model),
                 "sparsity": weight_sparsity(model, self.config)}
        self.history.setdefault("phases", []).append(entry)
        acc = "n/a" if entry["test_acc"] is None else f"{100 * entry['test_acc']:.2f}%"
        self.log(f"DSD {entry['phase']} phase done at step {step}: test accuracy {acc}, "
                 f"weight sparsity {100 * entry['sparsity']:.1f}%")

    def on_step_end(self, model: nn.Module, step: int, loss: float) -> None:
        self.last_step = step
        if self.phase == 0 and step == self.boundaries[0]:
            self._record(model, step)
            self.layers = sparsify(model, self.config)
            self.phase = 1
        elif self.phase == 1 and step == self.boundaries[1]:
            self._record(model, step)
            densify(model)
            for group in self.optimizer.param_groups:
                group["lr"] *= self.config.redense_lr_scale
            if self.scheduler is not None and hasattr(self.scheduler, "base_lrs"):
                self.scheduler.base_lrs = [lr * self.config.redense_lr_scale for lr in self.scheduler.base_lrs]
            self.phase = 2

    def on_train_end(self, model: nn.Module) -> None:
        if self.phase == 2:
            self._record(model, self.last_step)

    def state_dict(self) -> dict:
        return {"phase": self.phase, "layers": list(self.layers)}

    def load_state_dict(self, model: nn.Module, state: dict) -> None:
        """Rebuild the structure of the saved phase (placeholder masks that the model's state
        then fills), so that the checkpoint's state_dict loads."""
        self.phase = int(state["phase"])
        self.layers = list(state["layers"])
        if self.phase == 1:
            modules = dict(model.named_modules())
            for name in self.layers:
                attach(modules[name], Mask(torch.ones_like(modules[name].weight), owner="dsd"))
