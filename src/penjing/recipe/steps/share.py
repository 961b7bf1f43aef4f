"""Recipe step ``share``: k-means weight sharing (Deep Compression), then centroid fine-tuning.

```yaml
- share: {bias_bits: 5, init: linear, finetune_epochs: 3, lr: 0.001}   # conv 8 bits, others 5
- share: {bits: {conv: 8, "*": 5}, finetune_epochs: 3}
```

The fields are :class:`penjing.sharing.ShareConfig`'s, plus the common ``finetune_epochs``
(default 3) and ``lr`` (default 1e-3) of the centroid fine-tuning.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, model_validator
from torch import nn

from penjing.recipe.schema import StepParams
from penjing.sharing import ShareConfig

CONFIG = ShareConfig
_COMMON = {"finetune_epochs": 3, "lr": 1e-3}


class Params(StepParams):
    """Until the runner validates steps with ``CONFIG.from_dict`` itself: ShareConfig's fields
    (its messages) plus the common fine-tune options."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _check(cls, data: Any) -> Any:
        data = dict(data or {})
        epochs, lr = data.get("finetune_epochs", 3), data.get("lr", 1e-3)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"finetune_epochs must be an integer >= 0, got {epochs!r}")
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        CONFIG.from_dict({k: v for k, v in data.items() if k not in _COMMON})
        return data

    def to_config(self) -> ShareConfig:
        return CONFIG.from_dict({k: v for k, v in self.model_extra.items() if k not in _COMMON})

    @property
    def finetune_epochs(self) -> int:
        return self.model_extra.get("finetune_epochs", _COMMON["finetune_epochs"])

    @property
    def lr(self) -> float:
        return self.model_extra.get("lr", _COMMON["lr"])


def run(model: nn.Module, config: ShareConfig | Params, step: Any = None, ctx: Any = None) -> None:
    """Share with :func:`penjing.share`, measure, fine-tune the centroids, plot the values."""
    import dataclasses

    from penjing.report.plots import weight_histogram
    from penjing.sharing import share
    from penjing.train import evaluate

    if ctx is None:  # today's runner calls run(model, params, ctx)
        config, step, ctx = config.to_config(), config, step
    share(model, dataclasses.replace(config, seed=ctx.seed), progress=ctx.progress)
    # Accuracy straight after clustering, before the centroids are fine-tuned (the report's
    # stage table shows what fine-tuning recovers).
    ctx.artifacts.setdefault("stages", []).append(
        ("share (before fine-tune)", evaluate(model, ctx.test), len(ctx.summaries)))
    ctx.finetune(model, step.finetune_epochs, step.lr, desc="fine-tune centroids")
    path = weight_histogram({"after weight sharing": model}, ctx.out_dir / "shared_histogram.png", bins=400)
    ctx.artifacts.setdefault("plots", []).append(
        ("Weight values after sharing (spikes at the centroids; zeros left out)", path))
