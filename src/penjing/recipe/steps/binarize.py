"""Recipe step ``binarize``: BinaryConnect or XNOR-scaled binary weights, then fine-tuning.

```yaml
- binarize: {method: xnor, finetune_epochs: 10}
- binarize: {method: binaryconnect, stochastic: true, activations: [fc2]}
```
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from penjing.recipe.schema import StepParams


class Params(StepParams):
    method: Literal["binaryconnect", "xnor"] = "xnor"
    scaling: Literal["none", "tensor", "channel"] | None = None
    stochastic: bool = False
    clip: bool = True
    normalize: bool | None = None
    #: layers whose inputs are binarized too (XNOR-Net); none by default
    activations: str | list[str] = Field(default_factory=list)
    layers: str | list[str] | None = None
    exclude: str | list[str] = Field(default_factory=list)
    keep_first_last: bool = True
    finetune_epochs: int = Field(default=10, ge=0)
    lr: float = Field(default=1e-3, gt=0)


def run(model: nn.Module, params: Params, ctx) -> None:
    from penjing.lowbit import BinaryConfig, binarize, recalibrate_batchnorm

    binarize(model, BinaryConfig(method=params.method, scaling=params.scaling,
                                 stochastic=params.stochastic, clip=params.clip,
                                 normalize=params.normalize,
                                 activations=params.activations or (), layers=params.layers,
                                 exclude=params.exclude or (), keep_first_last=params.keep_first_last))
    ctx.finetune(model, params.finetune_epochs, params.lr, desc=f"binarize ({params.method})")
    if params.stochastic and params.finetune_epochs > 0:
        # BatchNorm statistics were gathered under random signs; evaluation uses the sign
        recalibrate_batchnorm(model, ctx.train)
