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

from typing import Any

from pydantic import ConfigDict, Field, PrivateAttr, model_validator
from torch import nn

from penjing.low_rank.config import LowRankConfig
from penjing.recipe.schema import StepParams

CONFIG = LowRankConfig


class Params(StepParams):
    """Thin stand-in until the runner validates steps with ``CONFIG.from_dict`` itself."""

    model_config = ConfigDict(extra="allow")
    finetune_epochs: int = Field(default=5, ge=0)
    lr: float = Field(default=3e-4, gt=0)
    _config: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _build(self) -> Params:
        self._config = CONFIG.from_dict(self.model_extra)
        return self

    @property
    def config(self) -> LowRankConfig:
        return self._config


def run(model: nn.Module, config, step, ctx=None) -> None:
    """``run(model, config, step, ctx)``; today's runner calls ``run(model, params, ctx)``."""
    from penjing.core.report import last_report
    from penjing.low_rank import lowrank

    if ctx is None:
        config, step, ctx = config.config, config, step
    lowrank(model, config, data=ctx.train, progress=ctx.progress)
    result = last_report(model).extra["plan"]
    steps = ctx.artifacts.setdefault("lowrank_steps", 0) + 1
    ctx.artifacts["lowrank_steps"] = steps
    plot = result.plot_spectra(ctx.out_dir / f"lowrank_spectra_{steps}.png")
    ctx.artifacts.setdefault("plots", []).append((f"Singular values per layer (lowrank step {steps})", plot))
    ctx.artifacts.setdefault("sections", []).append(
        f"### Low-rank factorisation (step {steps})\n\n{result.to_markdown()}")
    ctx.finetune(model, step.finetune_epochs, step.lr, desc="fine-tune low-rank")
