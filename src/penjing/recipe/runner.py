"""The pipeline: run a recipe's steps in order, measuring after each, and write the report."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from penjing.recipe.context import RecipeContext
from penjing.recipe.schema import Recipe, step_module
from penjing.report.summary import Summary


@dataclass
class RecipeResult:
    model: nn.Module
    dense: nn.Module
    summaries: list[Summary]
    report_path: Path
    context: RecipeContext

    @property
    def final(self) -> Summary:
        return self.summaries[-1]


def run_recipe(recipe: Recipe, model: nn.Module, ctx: RecipeContext) -> RecipeResult:
    """Run ``recipe`` on ``model`` (changed in place); the dense model is kept as a copy."""
    from penjing.report.markdown import write_report

    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    dense = copy.deepcopy(model)
    ctx.artifacts["dense_model"] = dense
    ctx.record(model, "dense")
    for i, step in enumerate(recipe.steps, 1):
        module = step_module(step.method)
        if step.options is not None:  # a CONFIG step: the method's config + fine-tune options
            module.run(model, step.params, step.options, ctx)
        else:
            module.run(model, step.params, ctx)
        ctx.record(model, f"after step {i}: {step.method}")
    report = write_report(ctx, dense, model)
    return RecipeResult(model=model, dense=dense, summaries=ctx.summaries, report_path=report, context=ctx)
