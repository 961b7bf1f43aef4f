"""Recipe step ``ternarize``: TTQ or TWN ternary weights, then fine-tuning.

```yaml
- ternarize: {method: ttq, threshold: 0.05, finetune_epochs: 10, lr: 0.001}
```
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from torch import nn

from penjing.recipe.schema import StepParams


class Params(StepParams):
    method: Literal["ttq", "twn"] = "ttq"
    #: TTQ: t in (0, 1) (threshold t * max|W|, default 0.05); TWN: factor > 0 (default 0.7).
    threshold: float | None = Field(default=None, gt=0)
    layers: str | list[str] | None = None
    exclude: str | list[str] = Field(default_factory=list)
    keep_first_last: bool = True
    finetune_epochs: int = Field(default=10, ge=0)
    lr: float = Field(default=1e-3, gt=0)

    @model_validator(mode="after")
    def _check_threshold(self) -> Params:
        if self.method == "ttq" and self.threshold is not None and not self.threshold < 1:
            raise ValueError(f"TTQ threshold t must be in (0, 1), got {self.threshold}")
        return self


def sparsity_section(model: nn.Module, title: str) -> str:
    """Markdown table of each ternary layer's fraction of zero weights."""
    from penjing.lowbit import ternary_sparsity

    rows = ternary_sparsity(model)
    lines = [f"### {title}", "", "| layer | zeros % |", "|---|---:|"]
    lines += [f"| {name} | {100 * s:.1f} |" for name, s in rows.items()]
    return "\n".join(lines) + "\n"


def run(model: nn.Module, params: Params, ctx) -> None:
    from penjing.lowbit import TernaryConfig, ternarize

    ternarize(model, TernaryConfig(method=params.method, threshold=params.threshold,
                                   layers=params.layers, exclude=params.exclude or (),
                                   keep_first_last=params.keep_first_last))
    ctx.finetune(model, params.finetune_epochs, params.lr, desc=f"ternarize ({params.method})")
    ctx.artifacts.setdefault("sections", []).append(
        sparsity_section(model, f"Ternary sparsity ({params.method.upper()})"))
