"""Recipe step ``lowrank``: factorise layers (SVD / conv split / embedding table), then fine-tune.

```yaml
steps:
  - lowrank: {params: 0.5, conv_method: channel, finetune_epochs: 5}
  - lowrank: {energy: 0.9, layers: "fc*"}
  - lowrank: {rank: 16, conv_method: spatial, exclude: [conv1]}
  - lowrank: {rank: {"layers.*.conv*": [8, 16]}, conv_method: tucker}
```

The fields are :class:`~penjing.low_rank.LowRankConfig`'s (declared once there), plus the
common ``finetune_epochs`` / ``lr``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from penjing.low_rank.config import LowRankConfig
from penjing.recipe.schema import StepOptions

CONFIG = LowRankConfig


@dataclass(frozen=True)
class Options(StepOptions):
    """This step's fine-tune defaults."""

    finetune_epochs: int = 5
    lr: float = 3e-4


OPTIONS = Options


def run(model: nn.Module, config, step, ctx) -> None:
    from penjing.core.report import last_report
    from penjing.low_rank import lowrank

    lowrank(model, config, data=ctx.train, progress=ctx.progress)
    result = last_report(model).extra["plan"]
    steps = ctx.artifacts.setdefault("lowrank_steps", 0) + 1
    ctx.artifacts["lowrank_steps"] = steps
    plot = result.plot_spectra(ctx.out_dir / f"lowrank_spectra_{steps}.png")
    ctx.artifacts.setdefault("plots", []).append((f"Singular values per layer (lowrank step {steps})", plot))
    ctx.artifacts.setdefault("sections", []).append(
        f"### Low-rank factorisation (step {steps})\n\n{result.to_markdown()}")
    ctx.finetune(model, step.finetune_epochs, step.lr, desc="fine-tune low-rank")
