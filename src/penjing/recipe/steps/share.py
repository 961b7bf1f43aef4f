"""Recipe step ``share``: k-means weight sharing (Deep Compression), then centroid fine-tuning.

```yaml
- share: {bias_bits: 5, init: linear, finetune_epochs: 3, lr: 0.001}   # conv 8 bits, others 5
- share: {bits: {conv: 8, "*": 5}, finetune_epochs: 3}
```

The fields are :class:`penjing.sharing.ShareConfig`'s, plus the common ``finetune_epochs``
(default 3) and ``lr`` (default 1e-3) of the centroid fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from penjing.recipe.schema import StepOptions
from penjing.sharing import ShareConfig

CONFIG = ShareConfig


@dataclass(frozen=True)
class Options(StepOptions):
    """Centroid fine-tuning after clustering (Deep Compression fine-tunes the codebooks)."""

    finetune_epochs: int = 3
    lr: float = 1e-3


OPTIONS = Options


def run(model: nn.Module, config: ShareConfig, step: Options, ctx: Any) -> None:
    """Share with :func:`penjing.share`, measure, fine-tune the centroids, plot the values."""
    import dataclasses

    from penjing.report.plots import weight_histogram
    from penjing.sharing import share
    from penjing.train import evaluate

    share(model, dataclasses.replace(config, seed=ctx.seed), progress=ctx.progress)
    # Accuracy straight after clustering, before the centroids are fine-tuned (the report's
    # stage table shows what fine-tuning recovers).
    ctx.artifacts.setdefault("stages", []).append(
        ("share (before fine-tune)", evaluate(model, ctx.test), len(ctx.summaries)))
    ctx.finetune(model, step.finetune_epochs, step.lr, desc="fine-tune centroids")
    path = weight_histogram({"after weight sharing": model}, ctx.out_dir / "shared_histogram.png", bins=400)
    ctx.artifacts.setdefault("plots", []).append(
        ("Weight values after sharing (spikes at the centroids; zeros left out)", path))
