"""Recipe step ``winograd``: swap eligible convs for Winograd convs (no fine-tune needed: the
result is the same up to rounding).

```yaml
steps:
  - winograd: {tiles: [2, 4], measure: false}
```
"""

from __future__ import annotations

from pydantic import Field, field_validator
from torch import nn

from penjing.recipe.context import RecipeContext
from penjing.recipe.schema import StepParams


class Params(StepParams):
    m: int | None = Field(None, description="output tile for every layer; null = choose per layer")
    tiles: list[int] = Field(default_factory=lambda: [2, 4], description="candidates for the choice")
    kernel_sizes: list[int] = Field(default_factory=lambda: [3, 5])
    layers: str | list[str] | None = None
    exclude: str | list[str] | None = None
    measure: bool = Field(False, description="time direct vs each tile; keep the fastest")
    batch: int = Field(32, description="training images used as the example input")

    @field_validator("m")
    @classmethod
    def _m(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"m must be >= 1, got {v}")
        return v

    @field_validator("tiles")
    @classmethod
    def _tiles(cls, v: list[int]) -> list[int]:
        if not v or min(v) < 1:
            raise ValueError(f"tiles must be a non-empty list of integers >= 1, got {v}")
        return v

    @field_validator("kernel_sizes")
    @classmethod
    def _kernels(cls, v: list[int]) -> list[int]:
        if not v or min(v) < 2:
            raise ValueError(f"kernel_sizes must be a non-empty list of integers >= 2, got {v}")
        return v

    @field_validator("batch")
    @classmethod
    def _batch(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"batch must be >= 1, got {v}")
        return v


def run(model: nn.Module, params: Params, ctx: RecipeContext) -> None:
    from penjing.winograd_conv import WinogradConfig, convert

    config = WinogradConfig(
        layers=params.layers, exclude=params.exclude if params.exclude is not None else (),
        m=params.m, tiles=tuple(params.tiles), kernel_sizes=tuple(params.kernel_sizes),
        example_input=ctx.train.tensors[0][: params.batch], measure=params.measure,
    )
    report = convert(model, config)
    ctx.artifacts.setdefault("sections", []).append(
        "## Winograd convolution\n\n" + report.to_markdown())
    ctx.artifacts["winograd_report"] = report
    if ctx.echo:
        print(report.summary_line())
