"""``prune(model, config)``: the one verb of the pruning package."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, Dataset

from penjing.pruning.config import PruneConfig
from penjing.pruning.schedule import PolynomialPruning, mask_round
from penjing.pruning.targets import Target, _warn, select_targets
from penjing.train import evaluate, fit


@dataclass
class RoundInfo:
    """What one pruning round left: passed to ``prune(..., log=)`` after every round."""

    round: int
    rounds: int
    params: int  # weights in the pruned layers (shrinks with structured pruning)
    nonzeros: int  # nonzero weights among them
    accuracy: float | None = None

    @property
    def kept(self) -> float:
        return self.nonzeros / self.params if self.params else 0.0


def _count(targets: list[Target]) -> tuple[int, int]:
    params = sum(t.module.weight.numel() for t in targets)
    nonzeros = sum(int(torch.count_nonzero(t.module.weight.detach())) for t in targets)
    return params, nonzeros


def _example(train: Dataset | DataLoader | None, example_inputs: torch.Tensor | None) -> torch.Tensor:
    if example_inputs is not None:
        return example_inputs
    if train is None:
        raise ValueError("structured pruning traces the model: pass example_inputs= (one input "
                         "batch) or train= (its first sample is used)")
    first = next(iter(train))[0] if isinstance(train, DataLoader) else train[0][0].unsqueeze(0)
    return first


def prune(
    model: nn.Module,
    config: PruneConfig | None = None,
    train: Dataset | DataLoader | None = None,
    *,
    test: Dataset | DataLoader | None = None,
    example_inputs: torch.Tensor | None = None,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[RoundInfo], None] | None = None,
    **options,
) -> nn.Module:
    """Prune ``model`` in place as ``config`` says and return it.

    Unstructured and N:M pruning attach a :class:`~penjing.pruning.mask.Mask` (``W = M * V``) to
    each selected layer; bake it with :func:`penjing.bake`. Structured pruning (``channel`` /
    ``filter``) rebuilds the layers smaller. ``train`` is needed when the schedule fine-tunes
    (``finetune_epochs > 0``, iterative, polynomial); structured pruning also traces the model
    on ``example_inputs`` (or the first sample of ``train``). With ``test``, each round's
    accuracy is measured and passed to ``log`` (a callable taking a :class:`RoundInfo`).
    Keyword ``options`` build the config when none is given: ``prune(model, sparsity=0.9)``.
    """
    if config is None:
        config = PruneConfig(**options)
    elif options:
        raise ValueError(f"pass either a PruneConfig or keyword options, not both ({sorted(options)})")
    needs_train = config.finetune_epochs > 0 or config.schedule == "polynomial"
    if needs_train and train is None:
        raise ValueError(f"schedule {config.schedule!r} with finetune_epochs={config.finetune_epochs} "
                         "fine-tunes the model: pass train= (a Dataset or DataLoader)")
    if config.schedule == "iterative" and config.finetune_epochs == 0:
        _warn("iterative schedule with finetune_epochs=0: the rounds do not retrain, so it prunes "
              "like one-shot")
    targets = select_targets(model, config)

    def finish_round(i: int, rounds: int) -> None:
        if config.finetune_epochs > 0 and config.schedule != "polynomial":
            fit(model, train, epochs=config.finetune_epochs, lr=config.lr, batch_size=config.batch_size,
                seed=seed + i, progress=progress, desc=f"prune round {i}/{rounds}")
        if log is not None:
            params, nonzeros = _count(targets)
            accuracy = evaluate(model, test) if test is not None else None
            log(RoundInfo(i, rounds, params, nonzeros, accuracy))

    rounds = config.rounds if config.schedule == "iterative" else 1
    if config.structured:
        _prune_structured(model, config, targets, _example(train, example_inputs), rounds, finish_round)
    elif config.schedule == "polynomial":
        steps = config.finetune_epochs * _steps_per_epoch(train, config.batch_size)
        callback = PolynomialPruning(model, config, steps)
        fit(model, train, epochs=config.finetune_epochs, lr=config.lr, batch_size=config.batch_size,
            seed=seed, callbacks=[callback], progress=progress, desc="polynomial pruning")
        finish_round(1, 1)
    else:
        for i in range(1, rounds + 1):
            mask_round(targets, config, fraction=i / rounds)
            finish_round(i, rounds)
    return model


def _steps_per_epoch(train: Dataset | DataLoader, batch_size: int) -> int:
    return len(train) if isinstance(train, DataLoader) else math.ceil(len(train) / batch_size)


def _prune_structured(model: nn.Module, config: PruneConfig, targets: list[Target],
                      example: torch.Tensor, rounds: int,
                      finish_round: Callable[[int, int], None]) -> None:
    from penjing.pruning.structured import output_layers, prune_structured

    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("structured pruning rebuilds layers, but this model has parametrizations "
                         "(masks, quantizers...) attached: bake them first with penjing.bake(model), "
                         "or prune structurally before the other methods")
    # Tracing runs a forward pass: in eval mode, so BatchNorm statistics are not updated by
    # the example (and a batch of one is fine for BatchNorm1d).
    was_training = model.training
    model.eval()
    try:
        outputs = output_layers(model, example)
        chosen: dict[nn.Module, float] = {}
        for t in targets:
            if t.module in outputs:
                if config.layers is not None:
                    _warn(f"skipping {t.label}: its outputs are the model's outputs, so its filters "
                          "cannot be removed")
                continue
            if t.sparsity:
                chosen[t.module] = t.sparsity
        if not chosen:
            raise ValueError("no layer left to prune structurally: every selected layer feeds the "
                             "model's output or has sparsity 0")
        # DepGraph shrinks the coupled layers in place; the Target entries keep pointing at the
        # same (now smaller) module objects, so the round log counts the new sizes.
        targets[:] = [t for t in targets if t.module in chosen]
        prune_structured(model, example, targets=chosen, criterion=config.criterion,
                         global_scope=config.scope == "global", rounds=rounds,
                         after_round=lambda i: finish_round(i, rounds))
    finally:
        model.train(was_training)
