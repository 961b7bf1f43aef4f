"""Recipe step ``binarize``: BinaryConnect or XNOR-scaled binary weights, then fine-tuning.

```yaml
- binarize: {algorithm: xnor, finetune_epochs: 10}
- binarize: {algorithm: binaryconnect, stochastic: true, activations: [fc2]}
```

The fields are :class:`~penjing.lowbit.BinaryConfig`'s (declared once there), plus the
common ``finetune_epochs`` / ``lr``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from penjing.lowbit.config import BinaryConfig
from penjing.recipe.schema import StepOptions

CONFIG = BinaryConfig


@dataclass(frozen=True)
class Options(StepOptions):
    """This step's fine-tune defaults."""

    finetune_epochs: int = 10
    lr: float = 1e-3


OPTIONS = Options


def run(model: nn.Module, config, step, ctx) -> None:
    from penjing.lowbit import binarize, recalibrate_batchnorm

    binarize(model, config)
    ctx.finetune(model, step.finetune_epochs, step.lr, desc=f"binarize ({config.algorithm})")
    if config.stochastic and step.finetune_epochs > 0:
        # BatchNorm statistics were gathered under random signs; evaluation uses the sign
        recalibrate_batchnorm(model, ctx.train)
