"""Recipe step ``distill``: fine-tune the model being compressed as the student of a teacher.

```yaml
- distill: {epochs: 10}                                # teacher: the dense model the recipe started from
- distill: {teacher: resnet, T: 4, alpha: 0.9, epochs: 20}   # a reference model, trained/cached on the data
```

The usual use: after pruning/sharing/quantizing, recover accuracy by distilling the dense
original into the compressed model (masks and other parametrizations stay in force).
"""

from __future__ import annotations

from pydantic import Field, model_validator
from torch import nn

from penjing.recipe.schema import StepParams
from penjing.train import DistillConfig, evaluate, fit
from penjing.train.precision import MixedPrecision


class Params(StepParams):
    teacher: str = "dense"
    epochs: int = Field(5, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    T: float = 4.0
    alpha: float = 0.9
    precision: str = "fp32"

    @model_validator(mode="after")
    def _check(self) -> Params:
        DistillConfig(T=self.T, alpha=self.alpha)  # the library's own messages
        MixedPrecision(self.precision)
        return self


def _teacher(name: str, ctx) -> nn.Module:
    if name == "dense":
        return ctx.artifacts["dense_model"]
    from penjing.models import MODELS, pretrained

    if name not in MODELS:
        raise ValueError(f"distill: teacher {name!r} is neither 'dense' nor a reference model {sorted(MODELS)}")
    return pretrained(name, ctx.train, seed=ctx.seed, progress=ctx.progress)


def run(model: nn.Module, params: Params, ctx) -> None:
    """Distill the teacher into ``model`` with the one training loop."""
    teacher = _teacher(params.teacher, ctx)
    before, teacher_acc = evaluate(model, ctx.test), evaluate(teacher, ctx.test)
    history = fit(model, ctx.train, epochs=params.epochs, lr=params.lr, batch_size=params.batch_size,
                  seed=ctx.seed, teacher=teacher, distill=DistillConfig(T=params.T, alpha=params.alpha),
                  precision=params.precision, test=ctx.test, progress=ctx.progress, desc="distill")
    after = history["test_acc"]
    if ctx.echo:
        print(f"distill from {params.teacher} ({100 * teacher_acc:.2f}%): {100 * before:.2f}% -> {100 * after:.2f}%")
    ctx.artifacts.setdefault("sections", []).append(
        "### Distillation\n\n| teacher | teacher accuracy | T | alpha | epochs | student before | student after |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n"
        f"| {params.teacher} | {100 * teacher_acc:.2f}% | {params.T:g} | {params.alpha:g} | {params.epochs} "
        f"| {100 * before:.2f}% | {100 * after:.2f}% |\n"
    )
