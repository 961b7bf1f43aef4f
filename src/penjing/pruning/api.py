"""``pj.prune(model, config)``: the one verb of the pruning package."""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader

from penjing.core.batch import batches, example_from
from penjing.core.config import Run, verb
from penjing.core.select import type_name
from penjing.pruning.config import PruneConfig
from penjing.pruning.masks import prunable
from penjing.pruning.schedule import PolynomialPruning, mask_round
from penjing.pruning.targets import Target, count, select_targets


@dataclass
class RoundInfo:
    """What one pruning round left (``pj.last_report(model).extra["rounds"]``, and the argument
    of ``PruneConfig.on_round``, which may fill in ``accuracy``)."""

    round: int
    rounds: int
    params: int  # weights in the pruned layers (shrinks with structured pruning)
    nonzeros: int  # nonzero weights among them
    accuracy: float | None = None

    @property
    def kept(self) -> float:
        return self.nonzeros / self.params if self.params else 0.0


def fit_with(model: nn.Module, run: Run, **options: Any) -> None:
    """:func:`penjing.train.fit` on ``run.data`` with the run's forward/loss callables (passed
    only when given, so the loop's defaults apply otherwise)."""
    from penjing.train import fit

    extra = {k: v for k, v in (("forward_fn", run.forward_fn), ("loss_fn", run.loss_fn)) if v is not None}
    accepted = inspect.signature(fit).parameters
    missing = [k for k in extra if k not in accepted]
    if missing:
        raise ValueError(f"prune: fine-tuning with {', '.join(missing)} needs penjing.train.fit "
                         "to take it; fine-tune yourself after pruning (finetune_epochs=0)")
    fit(model, run.data, progress=run.progress, **extra, **options)


def _describe(t: Target) -> tuple[str, str]:
    w = t.module.weight.detach()
    zeros = int((w == 0).sum())
    return f"dense {w.numel():,} weights", f"{100 * zeros / w.numel():.1f}% zeros ({zeros:,})"


@verb(PruneConfig)
def prune(model: nn.Module, config: PruneConfig, run: Run) -> None:
    """Prune ``model`` in place as ``config`` says and return it.

    Unstructured and N:M pruning attach a :class:`~penjing.core.mask.Mask` (``W = M * V``) to
    each selected layer (Linear, conv, embedding, the q/k/v/out projections of attention);
    bake it with :func:`penjing.bake`. Structured pruning (``channel`` / ``filter``) rebuilds
    the layers smaller and checks the result runs on ``example_inputs`` (or the first batch
    of ``data``). ``data`` is needed when the schedule fine-tunes (``finetune_epochs > 0``,
    polynomial) and for ``sparsity="auto"``. The report (``pj.last_report(model)``) lists
    every pruned layer with its zeros, the skipped ones with the reason, and
    ``extra["rounds"]`` (one :class:`RoundInfo` per round).
    """
    needs_data = config.finetune_epochs > 0 or config.schedule == "polynomial"
    if needs_data and run.data is None:
        raise ValueError(f"prune: schedule {config.schedule!r} with finetune_epochs="
                         f"{config.finetune_epochs} fine-tunes the model: pass data= (a Dataset, "
                         "DataLoader or iterable of batches)")
    if config.schedule == "iterative" and config.finetune_epochs == 0:
        run.report.note("iterative schedule with finetune_epochs=0: the rounds do not retrain, "
                        "so it prunes like one-shot")
    if config.sparsity == "auto":
        config = _auto(model, config, run)
    targets = select_targets(model, config, run.report)
    if config.scope == "global" and isinstance(config.sparsity, float):
        total = sum(int(prunable(t.module).sum()) for t in targets)
        if total and round(config.sparsity * total) >= total:
            raise ValueError(f"prune: sparsity {config.sparsity:g} would remove every weight "
                             f"({total} weights); a layer keeps at least one weight")
    elif config.scope != "global":
        for t in targets:
            _check_keeps_one(t)
    rounds_log: list[RoundInfo] = []
    run.report.extra["rounds"] = rounds_log

    def finish_round(i: int, rounds: int) -> None:
        if config.finetune_epochs > 0 and config.schedule != "polynomial":
            fit_with(model, run, epochs=config.finetune_epochs, lr=config.lr,
                     batch_size=config.batch_size, seed=config.seed + i,
                     desc=f"prune round {i}/{rounds}")
        params, nonzeros = count(targets)
        info = RoundInfo(i, rounds, params, nonzeros)
        if config.on_round is not None:
            config.on_round(model, info)
        rounds_log.append(info)

    rounds = config.rounds if config.schedule == "iterative" else 1
    before = {id(t.module): _describe(t)[0] for t in targets}
    if config.structured:
        from penjing.pruning.structured import prune_structurally

        example = example_from(run.example_inputs, run.data, "structured pruning")
        prune_structurally(model, config, targets, example, rounds, finish_round, run)
        return
    if config.schedule == "polynomial":
        steps = config.finetune_epochs * _steps_per_epoch(run.data, config.batch_size)
        callback = PolynomialPruning(model, config, steps, targets=targets)
        fit_with(model, run, epochs=config.finetune_epochs, lr=config.lr,
                 batch_size=config.batch_size, seed=config.seed, callbacks=[callback],
                 desc="polynomial pruning")
        finish_round(1, 1)
    else:
        for i in range(1, rounds + 1):
            mask_round(targets, config, fraction=i / rounds)
            finish_round(i, rounds)
    for t in targets:
        run.report.touch(t.name, t.module, before[id(t.module)], _describe(t)[1],
                         detail=config.granularity if config.n_m else "")


def _check_keeps_one(t: Target) -> None:
    """Refuse, before any round runs, a sparsity that would remove all of a layer's weights."""
    if t.sparsity is None:
        return
    n = int(prunable(t.module).sum())
    if n and round(t.sparsity * n) >= n:
        raise ValueError(f"prune: sparsity {t.sparsity:g} would remove every weight of layer "
                         f"{t.label} ({type_name(t.module)}, {n} weights); a layer keeps at least "
                         "one weight")


def _steps_per_epoch(data: Any, batch_size: int) -> int:
    if isinstance(data, DataLoader):
        return len(data)
    if hasattr(data, "__len__") and isinstance(data, torch.utils.data.Dataset):
        return math.ceil(len(data) / batch_size)
    return sum(1 for _ in batches(data, batch_size))


def _auto(model: nn.Module, config: PruneConfig, run: Run) -> PruneConfig:
    """``sparsity="auto"``: a sensitivity scan picks each layer's sparsity."""
    from penjing.pruning.sensitivity import sensitivity_scan

    data = config.validation if config.validation is not None else run.data
    if data is None:
        raise ValueError("prune: sparsity='auto' evaluates the model layer by layer: pass data= "
                         "(or PruneConfig.validation=)")
    result = sensitivity_scan(model, data, layers=config.layers, exclude=config.exclude,
                              criterion=config.criterion, forward_fn=run.forward_fn,
                              metric=run.metric)
    run.report.extra["sensitivity"] = result
    suggested = {name: s for name, s in result.suggest(config.tolerance).items() if s > 0}
    if not suggested:
        raise ValueError(f"prune: sparsity='auto': no layer can be pruned within "
                         f"{config.tolerance:g} metric points")
    return dataclasses.replace(config, sparsity=suggested)


def _refuse_parametrized(model: nn.Module) -> None:
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("prune: structured pruning rebuilds layers, but this model has "
                         "parametrizations (masks, quantizers...) attached: bake them first with "
                         "penjing.bake(model), or prune structurally before the other methods")
