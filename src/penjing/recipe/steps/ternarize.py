"""Recipe step ``ternarize``: TTQ or TWN ternary weights, then fine-tuning.

```yaml
- ternarize: {algorithm: ttq, threshold: 0.05, finetune_epochs: 10, lr: 0.001}
```

The fields are :class:`~penjing.lowbit.TernaryConfig`'s (declared once there), plus the
common ``finetune_epochs`` / ``lr``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, PrivateAttr, model_validator
from torch import nn

from penjing.lowbit.config import TernaryConfig
from penjing.recipe.schema import StepParams

CONFIG = TernaryConfig


class Params(StepParams):
    """Thin stand-in until the runner validates steps with ``CONFIG.from_dict`` itself."""

    model_config = ConfigDict(extra="allow")
    finetune_epochs: int = Field(default=10, ge=0)
    lr: float = Field(default=1e-3, gt=0)
    _config: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _build(self) -> Params:
        self._config = CONFIG.from_dict(self.model_extra)
        return self

    @property
    def config(self) -> TernaryConfig:
        return self._config


def sparsity_section(model: nn.Module, title: str) -> str:
    """Markdown table of each ternary layer's fraction of zero weights."""
    from penjing.lowbit import ternary_sparsity

    rows = ternary_sparsity(model)
    lines = [f"### {title}", "", "| layer | zeros % |", "|---|---:|"]
    lines += [f"| {name} | {100 * s:.1f} |" for name, s in rows.items()]
    return "\n".join(lines) + "\n"


def run(model: nn.Module, config, step, ctx=None) -> None:
    """``run(model, config, step, ctx)``; today's runner calls ``run(model, params, ctx)``."""
    from penjing.lowbit import ternarize

    if ctx is None:
        config, step, ctx = config.config, config, step
    ternarize(model, config)
    ctx.finetune(model, step.finetune_epochs, step.lr, desc=f"ternarize ({config.algorithm})")
    ctx.artifacts.setdefault("sections", []).append(
        sparsity_section(model, f"Ternary sparsity ({config.algorithm.upper()})"))
