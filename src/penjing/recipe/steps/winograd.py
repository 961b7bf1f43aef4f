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

from dataclasses import dataclass

from torch import nn

from penjing.recipe.schema import StepOptions
from penjing.winograd_conv.convert import WinogradConfig

CONFIG = WinogradConfig


@dataclass(frozen=True)
class Options(StepOptions):
    """This step's fine-tune defaults and its example batch size."""

    finetune_epochs: int = 0
    lr: float = 1e-3
    #: training samples used as the example input
    batch: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ValueError(f"batch must be an integer >= 1, got {self.batch!r}")


OPTIONS = Options


def run(model: nn.Module, config, step, ctx) -> None:
    from penjing.core.batch import batches
    from penjing.core.report import last_report
    from penjing.winograd_conv import winograd

    batch_size = step.batch
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
