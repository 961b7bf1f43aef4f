"""Recipe step ``winograd``: swap eligible convs for Winograd convs (no fine-tune needed: the
result is the same up to rounding).

```yaml
steps:
  - winograd: {tiles: [2, 4], measure: false}
```

The fields are :class:`~penjing.winograd_conv.WinogradConfig`'s (declared once there), plus
``batch``: how many training samples make the example input.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, PrivateAttr, model_validator
from torch import nn

from penjing.recipe.schema import StepParams
from penjing.winograd_conv.convert import WinogradConfig

CONFIG = WinogradConfig


class Params(StepParams):
    """Thin stand-in until the runner validates steps with ``CONFIG.from_dict`` itself."""

    model_config = ConfigDict(extra="allow")
    batch: int = Field(default=32, ge=1, description="training samples used as the example input")
    finetune_epochs: int = Field(default=0, ge=0)
    lr: float = Field(default=1e-3, gt=0)
    _config: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _build(self) -> Params:
        self._config = CONFIG.from_dict(self.model_extra)
        return self

    @property
    def config(self) -> WinogradConfig:
        return self._config


def run(model: nn.Module, config, step, ctx=None) -> None:
    """``run(model, config, step, ctx)``; today's runner calls ``run(model, params, ctx)``."""
    from penjing.core.batch import batches
    from penjing.core.report import last_report
    from penjing.winograd_conv import winograd

    if ctx is None:
        config, step, ctx = config.config, config, step
    batch_size = getattr(step, "batch", 32)
    example = next(iter(batches(ctx.train, batch_size=batch_size)))
    winograd(model, config, example_inputs=example)
    report = last_report(model)
    plan = report.extra["plan"]
    skipped = "".join(f"- {s.name} ({s.kind}): {s.reason}\n" for s in report.skipped)
    ctx.artifacts.setdefault("sections", []).append(
        "## Winograd convolution\n\n" + (plan.to_markdown() if plan.layers else "")
        + (f"\nSkipped:\n\n{skipped}" if skipped else ""))
    ctx.artifacts["winograd_report"] = plan
    if ctx.echo:
        print(plan.summary_line())
    if step.finetune_epochs:
        ctx.finetune(model, step.finetune_epochs, step.lr, desc="fine-tune winograd")
