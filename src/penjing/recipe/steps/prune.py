"""Recipe step ``prune``: the fields of :class:`penjing.pruning.PruneConfig`, as data.

```yaml
- prune: {sparsity: 0.92, scope: global, schedule: iterative, rounds: 6, finetune_epochs: 10}
- prune: {sparsity: {fc1: 0.93, fc2: 0.92, fc3: 0.75}, schedule: iterative, rounds: 5, finetune_epochs: 8}
- prune: {granularity: "2:4", finetune_epochs: 3}
- prune: {sparsity: 0.5, granularity: channel, finetune_epochs: 5}
- prune: {sparsity: auto, tolerance: 0.5, finetune_epochs: 5}   # per-layer, from sensitivity
```

``sensitivity: true`` adds the per-layer sensitivity curves to the report; ``sparsity: auto``
runs the analysis and prunes each layer at its suggested sparsity (the largest whose accuracy
drop alone is within ``tolerance`` points).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator, model_validator
from torch import nn

from penjing.pruning import PruneConfig, prune, sensitivity
from penjing.pruning.config import _check_sparsity
from penjing.pruning.report import rounds_markdown, rounds_plot
from penjing.recipe.schema import StepParams
from penjing.train import evaluate


class Params(StepParams):
    sparsity: float | dict[str, float] | Literal["auto"] | None = None
    quality: float | None = None
    criterion: str = "magnitude"
    scope: str = "per-layer"
    granularity: str = "unstructured"
    schedule: str = "one-shot"
    rounds: int = 4
    finetune_epochs: int = 0
    lr: float = 1e-3
    batch_size: int = 64
    initial_sparsity: float = 0.0
    begin: float = 0.0
    end: float = 0.75
    frequency: int = 10
    layers: str | list[str] | None = None
    exclude: str | list[str] | None = None
    sensitivity: bool = False
    tolerance: float = 1.0

    @field_validator("sparsity")
    @classmethod
    def _sparsity_range(cls, value: Any) -> Any:
        if value == "auto":
            return value
        if isinstance(value, dict):
            for key, v in value.items():
                _check_sparsity(v, f" for {key!r}")
        elif value is not None:
            _check_sparsity(value, "")
        return value

    @field_validator("tolerance")
    @classmethod
    def _tolerance(cls, value: float) -> float:
        if value < 0:
            raise ValueError(f"tolerance (accuracy points) must be >= 0, got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        if self.sparsity == "auto" and self.granularity != "unstructured":
            raise ValueError("sparsity: auto picks per-layer sparsities for unstructured pruning")
        # every other rule, with PruneConfig's own messages ('auto' stands in as a valid dict)
        self.to_config({"*": 0.5} if self.sparsity == "auto" else None)
        return self

    def to_config(self, sparsity: float | dict[str, float] | None = None) -> PruneConfig:
        fields = self.model_dump(exclude={"sensitivity", "tolerance"})
        fields["exclude"] = fields["exclude"] or ()
        if sparsity is not None:
            fields["sparsity"] = sparsity
        return PruneConfig(**fields)


def run(model: nn.Module, params: Params, ctx) -> None:
    """Prune ``model`` via :func:`penjing.pruning.prune`, logging every round's accuracy."""
    rounds = []

    def log(info) -> None:
        rounds.append(info)
        if ctx.echo:
            acc = f", accuracy {100 * info.accuracy:.2f}%" if info.accuracy is not None else ""
            print(f"prune round {info.round}/{info.rounds}: {100 * info.kept:.2f}% of "
                  f"{info.params:,} weights kept{acc}")

    before = evaluate(model, ctx.test)
    sparsity = None
    if params.sensitivity or params.sparsity == "auto":
        sparsity = _sensitivity(model, params, ctx)
    prune(model, params.to_config(sparsity), ctx.train, test=ctx.test, seed=ctx.seed, progress=ctx.progress,
          log=log)
    index = len(ctx.summaries)  # several prune steps in one recipe each keep their own files
    plot = rounds_plot(rounds, ctx.out_dir / f"prune_rounds_{index}.png", before)
    ctx.artifacts.setdefault("plots", []).append(("Pruning: weights kept and accuracy per round", plot))
    from penjing.report.plots import sparsity_per_layer

    layers = sparsity_per_layer(model, ctx.out_dir / f"prune_sparsity_{index}.png")
    ctx.artifacts.setdefault("plots", []).append(("Weights kept per layer after pruning", layers))
    ctx.artifacts.setdefault("sections", []).append(
        f"## Pruning ({params.schedule}, {params.granularity})\n\n" + rounds_markdown(rounds, before))


def _sensitivity(model: nn.Module, params: Params, ctx) -> dict[str, float] | None:
    """Run the analysis, report it, and return the suggested sparsities for ``sparsity: auto``."""
    result = sensitivity(model, ctx.test, layers=params.layers, exclude=params.exclude or (),
                         criterion=params.criterion, tolerance=params.tolerance,
                         plot=ctx.out_dir / f"prune_sensitivity_{len(ctx.summaries)}.png")
    ctx.artifacts.setdefault("plots", []).append(
        ("Pruning sensitivity, one layer at a time", ctx.out_dir / f"prune_sensitivity_{len(ctx.summaries)}.png"))
    ctx.artifacts.setdefault("sections", []).append("## Pruning sensitivity\n\n" + result.to_markdown(params.tolerance))
    if params.sparsity != "auto":
        return None
    suggested = {name: s for name, s in result.suggest(params.tolerance).items() if s > 0}
    if not suggested:
        raise ValueError(f"sparsity: auto: no layer can be pruned within {params.tolerance} accuracy points")
    if ctx.echo:
        print("sensitivity suggests: " + ", ".join(f"{k} {100 * v:g}%" for k, v in suggested.items()))
    return suggested
