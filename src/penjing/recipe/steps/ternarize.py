"""Recipe step ``ternarize``: TTQ or TWN ternary weights, then fine-tuning.

```yaml
- ternarize: {algorithm: ttq, threshold: 0.05, finetune_epochs: 10, lr: 0.001}
```

The fields are :class:`~penjing.lowbit.TernaryConfig`'s (declared once there), plus the
common ``finetune_epochs`` / ``lr``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from penjing.lowbit.config import TernaryConfig
from penjing.recipe.schema import StepOptions

CONFIG = TernaryConfig


@dataclass(frozen=True)
class Options(StepOptions):
    """This step's fine-tune defaults."""

    finetune_epochs: int = 10
    lr: float = 1e-3


OPTIONS = Options


def sparsity_section(model: nn.Module, title: str) -> str:
    """Markdown table of each ternary layer's fraction of zero weights."""
    from penjing.lowbit import ternary_sparsity

    rows = ternary_sparsity(model)
    lines = [f"### {title}", "", "| layer | zeros % |", "|---|---:|"]
    lines += [f"| {name} | {100 * s:.1f} |" for name, s in rows.items()]
    return "\n".join(lines) + "\n"


def run(model: nn.Module, config, step, ctx) -> None:
    from penjing.lowbit import ternarize

    ternarize(model, config)
    ctx.finetune(model, step.finetune_epochs, step.lr, desc=f"ternarize ({config.algorithm})")
    ctx.artifacts.setdefault("sections", []).append(
        sparsity_section(model, f"Ternary sparsity ({config.algorithm.upper()})"))
