"""Recipe step ``share``: k-means weight sharing (Deep Compression), then centroid fine-tuning.

```yaml
- share: {bits: {Linear: 5, conv: 8}, init: linear, finetune_epochs: 3, lr: 0.001}
```
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator
from torch import nn

from penjing.recipe.schema import StepParams


class Params(StepParams):
    #: one width for every layer, or by layer name / type name / "conv" / "fc" / "*"
    bits: int | dict[str, int] = Field(default_factory=lambda: {"Linear": 5, "conv": 8})
    init: Literal["linear", "density", "random"] = "linear"
    #: share biases too, at this many bits (not in the paper; they matter in small models)
    bias_bits: int | None = Field(default=None, ge=1, le=16)
    relocate_empty: bool = True
    layers: str | list[str] | None = None
    exclude: str | list[str] = Field(default_factory=list)
    finetune_epochs: int = Field(default=3, ge=0)
    lr: float = Field(default=1e-3, gt=0)

    @field_validator("bits")
    @classmethod
    def _bits_range(cls, v: Any) -> Any:
        for b in (v.values() if isinstance(v, dict) else [v]):
            if not 1 <= b <= 16:
                raise ValueError(f"bits must be in [1, 16] (2 to 65536 centroids), got {b}")
        return v


def run(model: nn.Module, params: Params, ctx) -> None:
    from penjing.report.plots import weight_histogram
    from penjing.sharing import ShareConfig, share
    from penjing.train import evaluate

    share(model, ShareConfig(bits=params.bits, init=params.init, bias_bits=params.bias_bits,
                             relocate_empty=params.relocate_empty, layers=params.layers,
                             exclude=params.exclude or (), seed=ctx.seed))
    # Accuracy straight after clustering, before the centroids are fine-tuned (the report's
    # stage table shows what fine-tuning recovers).
    ctx.artifacts.setdefault("stages", []).append(
        ("share (before fine-tune)", evaluate(model, ctx.test), len(ctx.summaries)))
    ctx.finetune(model, params.finetune_epochs, params.lr, desc="fine-tune centroids")
    path = weight_histogram({"after weight sharing": model}, ctx.out_dir / "shared_histogram.png", bins=400)
    ctx.artifacts.setdefault("plots", []).append(
        ("Weight values after sharing (spikes at the centroids; zeros left out)", path))
