"""Recipe step ``prune``: the fields of :class:`penjing.prune.PruneConfig`, as data.

```yaml
- prune: {sparsity: 0.92, scope: global, schedule: iterative, rounds: 6, finetune_epochs: 10}
- prune: {sparsity: {fc1: 0.93, fc2: 0.92, fc3: 0.75}, schedule: iterative, rounds: 5, finetune_epochs: 8}
- prune: {granularity: "2:4", finetune_epochs: 3}
- prune: {sparsity: 0.5, granularity: channel, finetune_epochs: 5}
```
"""

from __future__ import annotations

from typing import Any

from pydantic import field_validator, model_validator
from torch import nn

from penjing.prune import PruneConfig, prune
from penjing.prune.config import _check_sparsity
from penjing.prune.report import rounds_markdown, rounds_plot
from penjing.recipe.schema import StepParams
from penjing.train import evaluate


class Params(StepParams):
    sparsity: float | dict[str, float] | None = None
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

    @field_validator("sparsity")
    @classmethod
    def _sparsity_range(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key, v in value.items():
                _check_sparsity(v, f" for {key!r}")
        elif value is not None:
            _check_sparsity(value, "")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        self.to_config()  # every other rule, with PruneConfig's own messages
        return self

    def to_config(self) -> PruneConfig:
        fields = self.model_dump()
        fields["exclude"] = fields["exclude"] or ()
        return PruneConfig(**fields)


def run(model: nn.Module, params: Params, ctx) -> None:
    """Prune ``model`` via :func:`penjing.prune.prune`, logging every round's accuracy."""
    rounds = []

    def log(info) -> None:
        rounds.append(info)
        if ctx.echo:
            acc = f", accuracy {100 * info.accuracy:.2f}%" if info.accuracy is not None else ""
            print(f"prune round {info.round}/{info.rounds}: {100 * info.kept:.2f}% of "
                  f"{info.params:,} weights kept{acc}")

    before = evaluate(model, ctx.test)
    prune(model, params.to_config(), ctx.train, test=ctx.test, seed=ctx.seed, progress=ctx.progress,
          log=log)
    index = len(ctx.summaries)  # several prune steps in one recipe each keep their own files
    plot = rounds_plot(rounds, ctx.out_dir / f"prune_rounds_{index}.png", before)
    ctx.artifacts.setdefault("plots", []).append(("Pruning: weights kept and accuracy per round", plot))
    from penjing.report.plots import sparsity_per_layer

    layers = sparsity_per_layer(model, ctx.out_dir / f"prune_sparsity_{index}.png")
    ctx.artifacts.setdefault("plots", []).append(("Weights kept per layer after pruning", layers))
    ctx.artifacts.setdefault("sections", []).append(
        f"## Pruning ({params.schedule}, {params.granularity})\n\n" + rounds_markdown(rounds, before))
