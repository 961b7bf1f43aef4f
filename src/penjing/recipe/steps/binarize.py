"""Recipe step ``binarize``: BinaryConnect or XNOR-scaled binary weights, then fine-tuning.

```yaml
- binarize: {algorithm: xnor, finetune_epochs: 10}
- binarize: {algorithm: binaryconnect, stochastic: true, activations: [fc2]}
```

The fields are :class:`~penjing.lowbit.BinaryConfig`'s (declared once there), plus the
common ``finetune_epochs`` / ``lr``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, PrivateAttr, model_validator
from torch import nn

from penjing.lowbit.config import BinaryConfig
from penjing.recipe.schema import StepParams

CONFIG = BinaryConfig


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
    def config(self) -> BinaryConfig:
        return self._config


def run(model: nn.Module, config, step, ctx=None) -> None:
    """``run(model, config, step, ctx)``; today's runner calls ``run(model, params, ctx)``."""
    from penjing.lowbit import binarize, recalibrate_batchnorm

    if ctx is None:
        config, step, ctx = config.config, config, step
    binarize(model, config)
    ctx.finetune(model, step.finetune_epochs, step.lr, desc=f"binarize ({config.algorithm})")
    if config.stochastic and step.finetune_epochs > 0:
        # BatchNorm statistics were gathered under random signs; evaluation uses the sign
        recalibrate_batchnorm(model, ctx.train)
