"""Recipe step ``lowrank``: factorise layers (SVD / conv split), then fine-tune.

```yaml
steps:
  - lowrank: {params: 0.5, method: channel, finetune_epochs: 5}
  - lowrank: {energy: 0.9, layers: "fc*"}
  - lowrank: {rank: 16, method: spatial, exclude: [conv1]}
  - lowrank: {rank: {"layers.*.conv*": [8, 16]}, method: tucker}
```
"""

from __future__ import annotations

from pydantic import model_validator

from penjing.recipe.schema import StepParams


class Params(StepParams):
    rank: int | list[int] | dict[str, int | list[int]] | None = None  # a list is tucker's (r_in, r_out)
    energy: float | None = None
    params: float | None = None
    flops: float | None = None
    method: str | dict[str, str] = "channel"
    layers: str | list[str] | None = None
    exclude: str | list[str] | None = None
    sensitivity: bool = False
    refine: bool = False
    finetune_epochs: int = 5
    lr: float = 3e-4

    @model_validator(mode="after")
    def _check(self) -> Params:
        # LowRankConfig holds the rules (one rank rule, ranges, methods); build it once here
        # so a bad recipe fails when it is loaded, with its message.
        self.config()
        if self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be >= 0, got {self.finetune_epochs}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        return self

    def config(self):
        from penjing.low_rank import LowRankConfig

        return LowRankConfig(rank=self.rank, energy=self.energy, params=self.params, flops=self.flops,
                             method=self.method, layers=self.layers, exclude=self.exclude or (),
                             sensitivity=self.sensitivity, refine=self.refine)


def run(model, params: Params, ctx) -> None:
    from penjing.low_rank import decompose_model

    result = decompose_model(model, params.config(), data=ctx.train)
    steps = ctx.artifacts.setdefault("lowrank_steps", 0) + 1
    ctx.artifacts["lowrank_steps"] = steps
    plot = result.plot_spectra(ctx.out_dir / f"lowrank_spectra_{steps}.png")
    ctx.artifacts.setdefault("plots", []).append((f"Singular values per layer (lowrank step {steps})", plot))
    ctx.artifacts.setdefault("sections", []).append(
        f"### Low-rank factorisation (step {steps})\n\n{result.to_markdown()}")
    ctx.finetune(model, params.finetune_epochs, params.lr, desc="fine-tune low-rank")
