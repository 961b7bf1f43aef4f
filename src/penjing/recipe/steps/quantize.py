"""Recipe step ``quantize``: PTQ (calibrated) or QAT (trained with the one loop), optionally
converted to int8 kernels.

```yaml
steps:
  - quantize: {bits: 8, act_bits: 8, per_channel: true, calib: 512}          # PTQ W8A8
  - quantize: {bits: 4, mode: qat, lsq: true, epochs: 5, lr: 1e-4}           # QAT W4A8
  - quantize: {bits: 8, act_bits: null}                                      # weight-only
```

Leave ``convert`` false when an ``encode`` step follows: the encoder reads the fake-quant
parametrization's codec hint (affine integers, sparse if pruned); ``convert: true`` swaps in
int8 modules for real integer execution.
"""

from __future__ import annotations

from pydantic import model_validator

from penjing.recipe.schema import StepParams


class Params(StepParams):
    bits: int = 8
    act_bits: int | None = 8
    mode: str = "ptq"
    per_channel: bool = True
    symmetric: bool = True
    observer: str = "minmax"
    act_observer: str = "minmax"
    lsq: bool = False
    calib: int = 512
    layer_bits: dict[str, int] = {}
    layers: str | list[str] | None = None
    exclude: str | list[str] | None = None
    epochs: int = 3
    lr: float = 1e-4
    freeze_after: int | None = None
    convert: bool = False
    reduce_range: str = "weights"

    @model_validator(mode="after")
    def _check(self) -> Params:
        self.config()  # QuantConfig holds the rules; a bad recipe fails on load with its message
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        return self

    def config(self, progress: bool = True):
        from penjing.quantization.config import QuantConfig, reduce_range_flags

        return QuantConfig(bits=self.bits, act_bits=self.act_bits, mode=self.mode, per_channel=self.per_channel,
                           symmetric=self.symmetric, observer=self.observer, act_observer=self.act_observer,
                           lsq=self.lsq, calib_samples=self.calib, layer_bits=dict(self.layer_bits),
                           layers=self.layers, exclude=self.exclude or (), freeze_after=self.freeze_after,
                           **reduce_range_flags(self.reduce_range), progress=progress)


def run(model, params: Params, ctx) -> None:
    from penjing.quantization import convert, qat_fit, quantize
    from penjing.quantization.report import layer_report, to_markdown
    from penjing.train import evaluate

    before = evaluate(model, ctx.test)
    config = params.config(progress=ctx.progress)
    if params.mode == "qat":
        qat_fit(model, config, ctx.train, epochs=params.epochs, lr=params.lr, seed=ctx.seed,
                progress=ctx.progress)
    else:
        quantize(model, config, calibration=ctx.train)
    after = evaluate(model, ctx.test)
    rows = layer_report(model)
    accuracy = {"before": before, f"{params.mode} fake-quant": after}
    if params.convert:
        convert(model)
        accuracy["int8 kernels"] = evaluate(model, ctx.test)
    act = "weight-only" if params.act_bits is None else f"A{params.act_bits}"
    ctx.artifacts.setdefault("sections", []).append(
        f"### Quantization ({params.mode.upper()}, W{params.bits} {act})\n\n{to_markdown(rows, accuracy)}")
