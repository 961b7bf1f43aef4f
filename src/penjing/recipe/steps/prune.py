"""Recipe step ``prune``: the fields of :class:`penjing.pruning.PruneConfig`, as data.

```yaml
- prune: {sparsity: 0.92, scope: global, schedule: iterative, rounds: 6, finetune_epochs: 10}
- prune: {sparsity: {first: 0.93, last: 0.75, "*": 0.94}, schedule: iterative, finetune_epochs: 8}
- prune: {granularity: "2:4", finetune_epochs: 3}
- prune: {sparsity: 0.5, granularity: channel, finetune_epochs: 5}
- prune: {sparsity: auto, tolerance: 0.5, finetune_epochs: 5}   # per-layer, from sensitivity
```

``sparsity: auto`` runs the sensitivity scan (on the recipe's held-out split) and prunes each
layer at its suggested sparsity; the curves go into the report.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from penjing.core.report import last_report
from penjing.pruning import PruneConfig, prune
from penjing.pruning.report import rounds_markdown, rounds_plot
from penjing.train import evaluate

CONFIG = PruneConfig


def run(model: nn.Module, config: PruneConfig, step: Any, ctx: Any) -> None:
    """Prune ``model`` with :func:`penjing.prune` on the recipe's training data, logging every
    round's accuracy; plots and tables go to the report."""
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
        path = scan.plot(ctx.out_dir / f"prune_sensitivity_{index}.png", config.tolerance)
        ctx.artifacts.setdefault("plots", []).append(("Pruning sensitivity, one layer at a time", path))
        ctx.artifacts.setdefault("sections", []).append(
            "## Pruning sensitivity\n\n" + scan.to_markdown(config.tolerance))
    rounds = report.extra["rounds"]
    plot = rounds_plot(rounds, ctx.out_dir / f"prune_rounds_{index}.png", before)
    ctx.artifacts.setdefault("plots", []).append(("Pruning: weights kept and accuracy per round", plot))
    from penjing.report.plots import sparsity_per_layer

    layers = sparsity_per_layer(model, ctx.out_dir / f"prune_sparsity_{index}.png")
    ctx.artifacts.setdefault("plots", []).append(("Weights kept per layer after pruning", layers))
    ctx.artifacts.setdefault("sections", []).append(
        f"## Pruning ({config.schedule}, {config.granularity})\n\n" + rounds_markdown(rounds, before))
