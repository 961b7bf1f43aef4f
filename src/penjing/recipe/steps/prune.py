"""Recipe step ``prune``: the fields of :class:`penjing.pruning.PruneConfig`, as data.

```yaml
- prune: {sparsity: 0.92, scope: global, schedule: iterative, rounds: 6, finetune_epochs: 10}
- prune: {sparsity: {first: 0.93, last: 0.75, "*": 0.94}, schedule: iterative, finetune_epochs: 8}
- prune: {granularity: "2:4", finetune_epochs: 3}
- prune: {sparsity: 0.5, granularity: channel, finetune_epochs: 5}
- prune: {sparsity: auto, tolerance: 0.5, finetune_epochs: 5}   # per-layer, from sensitivity
- prune: {sparsity: auto, max_drop: 1.0, schedule: iterative, rounds: 8, finetune_epochs: 5}
```

``sparsity: auto`` runs the sensitivity scan (on the recipe's held-out split, ``ctx.val``) and
prunes each layer at its suggested sparsity (``tolerance``: points each layer may cost alone);
the curves go into the report.

``sparsity: auto`` with ``max_drop`` (validation points the whole step may cost, after
fine-tuning) and/or ``target`` (the overall sparsity to reach) is the *budgeted* form: the scan
orders every (layer, sparsity) move by validation points lost per weight removed
(:func:`penjing.core.sensitivity.budget_path`), and ``rounds`` rounds raise the overall
sparsity geometrically along that order (towards ``target``, or as far as the scanned
sparsities go), each followed by ``finetune_epochs`` of fine-tuning and a measurement on the
validation split. A round whose validation accuracy falls more than ``max_drop`` points
below the dense model is undone; then up to ``refine`` (default 2) rounds try levels halfway
(in weights kept) between the last level that held and the undone one, and pruning stops. The test split is never used
for a choice; its accuracy per round is only shown in the report.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

from torch import nn

from penjing.core import report as _report
from penjing.core.report import last_report
from penjing.core.sensitivity import budget_at, budget_path, measure
from penjing.pruning import PruneConfig, prune
from penjing.pruning.api import RoundInfo
from penjing.pruning.report import rounds_markdown, rounds_plot
from penjing.recipe.schema import StepOptions
from penjing.train import evaluate

CONFIG = PruneConfig


@dataclass(frozen=True)
class OPTIONS(StepOptions):  # noqa: N801 (the name the recipe schema looks up)
    """The common step options plus the budget of ``sparsity: auto``."""

    #: validation accuracy points the step may cost after fine-tuning (budgeted auto)
    max_drop: float | None = None
    #: overall sparsity, over the pruned layers, to reach (budgeted auto)
    target: float | None = None
    #: after an undone round, rounds tried halfway between the last level that held and it
    refine: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_drop is not None and (isinstance(self.max_drop, bool) or not isinstance(
                self.max_drop, int | float) or not 0 <= self.max_drop < math.inf):
            raise ValueError(f"max_drop (validation accuracy points) must be a number >= 0, got "
                             f"{self.max_drop!r}")
        if self.target is not None and (isinstance(self.target, bool) or not isinstance(
                self.target, int | float) or not 0 < self.target < 1):
            raise ValueError(f"target (overall sparsity) must be a number in (0, 1), got {self.target!r}")
        if isinstance(self.refine, bool) or not isinstance(self.refine, int) or self.refine < 0:
            raise ValueError(f"refine must be an integer >= 0, got {self.refine!r}")


def run(model: nn.Module, config: PruneConfig, step: Any, ctx: Any) -> None:
    """Prune ``model`` with :func:`penjing.prune` on the recipe's training data, logging every
    round's accuracy; plots and tables go to the report."""
    budgeted = getattr(step, "max_drop", None) is not None or getattr(step, "target", None) is not None
    if budgeted:
        if config.sparsity != "auto":
            raise ValueError("prune: max_drop and target budget sparsity: auto; with a given "
                             f"sparsity ({config.sparsity!r}) leave them out")
        if config.schedule == "polynomial":
            raise ValueError("prune: sparsity: auto with max_drop/target prunes in rounds; use "
                             "schedule iterative (or one-shot: one round)")
        _run_budgeted(model, config, step, ctx)
        return
    before = evaluate(model, ctx.test)

    def on_round(m: nn.Module, info) -> None:
        info.accuracy = evaluate(m, ctx.test)
        if ctx.echo:
            print(f"prune round {info.round}/{info.rounds}: {100 * info.kept:.2f}% of "
                  f"{info.params:,} weights kept, accuracy {100 * info.accuracy:.2f}%")

    held_out = ctx.val  # choices (the sensitivity scan, "auto" sparsity) never see the test split
    config = dataclasses.replace(config, on_round=on_round, seed=ctx.seed,
                                 validation=config.validation if config.validation is not None else held_out)
    prune(model, config, data=ctx.train, progress=ctx.progress)
    report = last_report(model)
    index = len(ctx.summaries)  # several prune steps in one recipe each keep their own files
    scan = report.extra.get("sensitivity")
    if scan is not None:
        _scan_section(scan, config.tolerance, index, ctx)
    _rounds_section(model, report.extra["rounds"], before, f"{config.schedule}, {config.granularity}",
                    index, ctx)


def _scan_section(scan, tolerance: float, index: int, ctx: Any) -> None:
    path = scan.plot(ctx.out_dir / f"prune_sensitivity_{index}.png", tolerance)
    ctx.artifacts.setdefault("plots", []).append(("Pruning sensitivity, one layer at a time", path))
    ctx.artifacts.setdefault("sections", []).append(
        "## Pruning sensitivity\n\n" + scan.to_markdown(tolerance))


def _rounds_section(model: nn.Module, rounds: list, before: float, how: str, index: int, ctx: Any,
                    extra: str = "") -> None:
    plot = rounds_plot(rounds, ctx.out_dir / f"prune_rounds_{index}.png", before)
    ctx.artifacts.setdefault("plots", []).append(("Pruning: weights kept and accuracy per round", plot))
    from penjing.report.plots import sparsity_per_layer

    layers = sparsity_per_layer(model, ctx.out_dir / f"prune_sparsity_{index}.png")
    ctx.artifacts.setdefault("plots", []).append(("Weights kept per layer after pruning", layers))
    ctx.artifacts.setdefault("sections", []).append(
        f"## Pruning ({how})\n\n" + rounds_markdown(rounds, before) + extra)


def _run_budgeted(model: nn.Module, config: PruneConfig, step: Any, ctx: Any) -> None:
    """Budgeted ``sparsity: auto`` (module docstring): the scan, the path, the rounds."""
    from penjing.pruning.sensitivity import sensitivity_scan

    if ctx.val is None:
        raise ValueError("prune: sparsity: auto measures on the validation split; the recipe has none")
    scan = sensitivity_scan(model, ctx.val, layers=config.layers, exclude=config.exclude,
                            criterion=config.criterion)
    sizes = {name: model.get_submodule(name).weight.numel() for name in scan.curves}
    if not sizes:
        raise ValueError("prune: sparsity: auto: the sensitivity scan measured no layer "
                         f"({'; '.join(f'{k}: {v}' for k, v in scan.skipped.items()) or 'none selected'})")
    total = sum(sizes.values())
    path = budget_path(scan, saving=lambda name, s: s * sizes[name])
    reachable = path[-1].saved / total
    goal = min(step.target, reachable) if step.target is not None else reachable
    rounds = config.rounds if config.schedule == "iterative" else 1
    names = list(scan.curves)
    # Every layer the budget may reach gets its mask now (all ones), so each round only lowers
    # mask entries and a round can be undone by loading the state_dict of the one before.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no layer was changed": by design, masks of ones
        _prune_round(model, config, {n: 0.0 for n in names}, epochs=0, seed=ctx.seed, ctx=ctx)
    accepted = {k: v.detach().clone() for k, v in model.state_dict().items()}
    accepted_report = last_report(model)
    dense_test = evaluate(model, ctx.test)
    log: list[RoundInfo] = []
    lines = ["| round | target sparsity | val accuracy % | val drop (points) | kept |",
             "|---|---|---|---|---|", f"| dense | 0% | {100 * scan.baseline:.2f} | 0.00 | |"]
    chosen = {n: 0.0 for n in names}
    stopped = None  # the first round that was undone
    levels = iter(1 - (1 - goal) ** (r / rounds) for r in range(1, rounds + 1))
    previous, failed, refine_left, r = 0.0, None, step.refine, 0
    while True:
        if failed is None:
            level = next(levels, None)
        else:  # halfway (in kept weights) between the last level that held and the one that did not
            level = 1 - ((1 - previous) * (1 - failed)) ** 0.5 if refine_left > 0 else None
            refine_left -= 1
        if level is None:
            break
        budget = budget_at(path, level * total, names, none=0.0)
        if budget == chosen:  # the path has no move between these levels
            previous = level
            continue
        r += 1
        _prune_round(model, config, budget, epochs=config.finetune_epochs, seed=ctx.seed + r, ctx=ctx)
        val = measure(model, ctx.val)
        drop = 100 * (scan.baseline - val)
        ok = step.max_drop is None or drop <= step.max_drop + 1e-9
        lines.append(f"| {r} | {100 * level:.1f}% | {100 * val:.2f} | {drop:.2f} | "
                     f"{'yes' if ok else 'no: undone'} |")
        if ctx.echo:
            print(f"prune round {r}: sparsity {100 * level:.1f}%, validation accuracy "
                  f"{100 * val:.2f}% ({drop:.2f} points below dense){'' if ok else ': undone'}")
        if not ok:
            model.load_state_dict(accepted)
            _report.record(model, accepted_report)
            stopped = stopped or r
            failed = level
            continue
        accepted = {k: v.detach().clone() for k, v in model.state_dict().items()}
        accepted_report = last_report(model)
        chosen, previous = budget, level
        kept = sum(sizes[n] * (1 - chosen[n]) for n in names)
        log.append(RoundInfo(r, rounds + step.refine, total, round(kept),
                             accuracy=evaluate(model, ctx.test)))
    if not any(chosen.values()):
        warnings.warn(f"prune: sparsity: auto: every round cost more than max_drop="
                      f"{step.max_drop:g} validation points; the model is left dense", UserWarning,
                      stacklevel=2)
    ctx.artifacts["prune_budget"] = {"sparsity": chosen, "val_baseline": scan.baseline,
                                     "first_undone_round": stopped}
    index = len(ctx.summaries)
    _scan_section(scan, config.tolerance, index, ctx)
    per_layer = "\n".join(f"| {n} | {sizes[n]:,} | {100 * chosen[n]:g}% |" for n in names)
    bound = f"max_drop {step.max_drop:g} validation points" if step.max_drop is not None \
        else "no accuracy bound"
    budget_md = (f"\nBudget: {bound}, target {100 * goal:.1f}% overall; decided on the validation split "
                 f"({len(ctx.val)} samples).\n\n" + "\n".join(lines)
                 + "\n\n| layer | weights | sparsity |\n|---|---|---|\n" + per_layer + "\n")
    _rounds_section(model, log, dense_test, "sparsity: auto, budgeted", index, ctx, budget_md)


def _prune_round(model: nn.Module, config: PruneConfig, sparsity: dict[str, float], *, epochs: int,
                 seed: int, ctx: Any) -> None:
    """One round: every budgeted layer to its sparsity (by exact name), then fine-tune."""
    names = set(sparsity)
    round_config = dataclasses.replace(
        config, sparsity=sparsity, schedule="one-shot", finetune_epochs=epochs,
        seed=seed, validation=None, on_round=None,
        layers=lambda name, _m: name in names, exclude=())
    prune(model, round_config, data=ctx.train, progress=ctx.progress)
