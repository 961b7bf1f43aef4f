"""Recipe step ``dsd``: Dense-Sparse-Dense training of the model over ``epochs``.

```yaml
- dsd: {sparsity: 0.5, epochs: 30}                     # thirds: dense, 50% sparse, re-dense at lr/10
- dsd: {sparsity: 0.3, epochs: 45, phases: [1, 1, 1], redense_lr_scale: 0.1, layers: Linear}
```
"""

from __future__ import annotations

from pydantic import Field, model_validator
from torch import nn

from penjing.recipe.schema import StepParams
from penjing.train import DSDConfig, fit
from penjing.train.dsd_schedule import phases_markdown
from penjing.train.precision import MixedPrecision


class Params(StepParams):
    sparsity: float = 0.5
    epochs: int = Field(30, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    phases: list[float] = [1.0, 1.0, 1.0]
    redense_lr_scale: float = 0.1
    layers: str | list[str] | None = None
    precision: str = "fp32"

    @model_validator(mode="after")
    def _check(self) -> Params:
        self.config()  # the library's own messages
        MixedPrecision(self.precision)
        return self

    def config(self) -> DSDConfig:
        return DSDConfig(sparsity=self.sparsity, phases=tuple(self.phases),
                         redense_lr_scale=self.redense_lr_scale, layers=self.layers)


def run(model: nn.Module, params: Params, ctx) -> None:
    """Dense -> sparse -> re-dense with the one training loop; reports each phase."""
    history = fit(model, ctx.train, epochs=params.epochs, lr=params.lr, batch_size=params.batch_size,
                  seed=ctx.seed, dsd=params.config(), precision=params.precision, test=ctx.test,
                  progress=ctx.progress, desc="dsd")
    ctx.artifacts.setdefault("sections", []).append("### DSD\n\n" + phases_markdown(history["phases"]))
