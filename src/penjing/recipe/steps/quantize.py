"""Recipe step ``quantize``: PTQ (calibrated) or QAT (trained with the one loop), optionally
converted to int8 kernels. The fields are :class:`~penjing.quantization.QuantConfig`'s.

```yaml
steps:
  - quantize: {bits: 8, per_channel: true, calib_samples: 512}               # PTQ W8A8
  - quantize: {bits: 4, mode: qat, lsq: true, qat_epochs: 5, lr: 1e-4}       # QAT W4A8
  - quantize: {bits: 8, activations: none}                                   # weight-only
  - quantize: {bits: 8, int8: true}                                          # int8 kernels
```

Leave ``int8`` false when an ``encode`` step follows: the encoder reads the fake-quant
parametrization's codec hint (affine integers, sparse if pruned); ``int8: true`` swaps in
int8 modules for real integer execution.
"""

from __future__ import annotations

from penjing.quantization.config import QuantConfig

CONFIG = QuantConfig


def run(model, config, step, ctx) -> None:
    """Quantize (PTQ or QAT, as the config says), then convert to int8 kernels if asked."""
    from penjing.core.report import last_report
    from penjing.quantization import qat_fit, quantize
    from penjing.quantization.report import layer_report, to_markdown
    from penjing.train import evaluate

    before = evaluate(model, ctx.test)
    import dataclasses

    staged = dataclasses.replace(config, int8=False)
    if config.mode == "qat":
        qat_fit(model, staged, ctx.train, seed=ctx.seed, progress=ctx.progress)
    else:
        quantize(model, staged, data=ctx.train, progress=ctx.progress)
    if step.finetune_epochs:  # fine-tune the fake-quantized model (STE) before measuring
        ctx.finetune(model, step.finetune_epochs, step.lr, desc="fine-tune quantized")
    after = evaluate(model, ctx.test)
    rows = layer_report(model)
    accuracy = {"before": before, f"{config.mode} fake-quant": after}
    notes = ""
    if config.int8:
        from penjing.quantization import convert

        convert(model, graph=False)  # the encode step and the size table read the int8 layers
        accuracy["int8 kernels"] = evaluate(model, ctx.test)
        skipped = last_report(model).skipped
        notes = "".join(f"\n- stays float: {s.name}: {s.reason}" for s in skipped)
    act = "weight-only" if config.weight_only else f"A{config.act_bits}"
    ctx.artifacts.setdefault("sections", []).append(
        f"### Quantization ({config.mode.upper()}, W{config.bits} {act})\n\n{to_markdown(rows, accuracy)}{notes}")
