"""``penjing.export``: write a compressed model as ONNX and check it with ONNX Runtime."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from penjing.export.prepare import export_ready

EXPORTERS = ("auto", "dynamo", "torchscript")


@dataclass
class ExportResult:
    """What :func:`export` wrote and how.

    ``exporter`` is the one that ran ("dynamo" or "torchscript"); ``fallback_reason`` says
    why the dynamo exporter was not used when ``exporter="auto"`` fell back. ``max_rel_error``
    is ONNX Runtime's output against PyTorch's (``max|ort - torch| / max|torch|``) on the
    example inputs, ``None`` when not checked.
    """

    path: Path
    exporter: str
    opset: int
    bytes: int
    notes: list[str] = field(default_factory=list)
    fallback_reason: str | None = None
    max_rel_error: float | None = None
    int8_initializers: int = 0

    def describe(self) -> str:
        parts = [f"{self.path} ({self.bytes:,} bytes, {self.exporter} exporter, opset {self.opset})"]
        if self.fallback_reason:
            parts.append(f"dynamo exporter failed, used TorchScript: {self.fallback_reason}")
        parts += self.notes
        if self.int8_initializers:
            parts.append(f"{self.int8_initializers} weights stored as int8")
        if self.max_rel_error is not None:
            parts.append(f"ONNX Runtime vs PyTorch: max relative error {self.max_rel_error:.2e}")
        return "\n".join(parts)


def _as_tuple(example_inputs) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs:
        return tuple(example_inputs)
    raise ValueError("example_inputs must be a tensor or a non-empty tuple of tensors")


def _run_exporter(model: nn.Module, args: tuple, path: Path, dynamo: bool, opset: int) -> None:
    from penjing.export.dynamic import TRANSLATIONS, _WeightOnly
    from penjing.export.qdq import _decomposed, _QDQBase

    qdq = [m for m in model.modules() if isinstance(m, (_QDQBase, _WeightOnly))]
    for module in qdq:
        module.style = "decomposed" if dynamo else "fake_quant"
    if qdq and dynamo:
        _decomposed()  # register the ops before the exporter builds its op table
    names = [f"input{i}" if i else "input" for i in range(len(args))]
    # the batch dimension stays free (a graph traced at batch 8 runs at batch 1 too)
    axes = {n: {0: "batch"} for n, a in zip(names, args, strict=True) if a.dim() > 0}
    kwargs = dict(input_names=names, output_names=["output"], opset_version=opset, dynamo=dynamo,
                  dynamic_axes={**axes, "output": {0: "batch"}})
    if dynamo:
        kwargs.update(verbose=False, external_data=False, custom_translation_table=TRANSLATIONS)
    # both exporters talk a lot (progress lines, deprecation warnings); errors still raise
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, str(path), **kwargs)
    finally:
        logger.setLevel(level)


def export(model: nn.Module, path: str | Path, example_inputs, *, exporter: str = "auto",
           opset: int = 18, check: bool = True, rtol: float | None = None,
           quantize_outputs: bool = True, calibration=None) -> ExportResult:
    """Write ``model`` to ``path`` as ONNX, traced on ``example_inputs``; return what ran.

    The model is not changed: a copy is baked into plain float layers, Winograd convs become
    convs and int8 layers a QDQ graph (see :mod:`penjing.export.prepare`). ``exporter``:
    "dynamo" (``torch.onnx.export(dynamo=True)``), "torchscript", or "auto": dynamo, and
    TorchScript if dynamo fails (the result says which ran, and why). With ``check`` the file
    is run by ONNX Runtime on the example inputs and compared with the model's own output;
    ``rtol`` turns a larger max relative error into a ``ValueError``. A layer ONNX cannot
    express raises ``ValueError`` naming it.

    int8 models: with ``quantize_outputs`` each int8 layer's output is quantized too (8-bit,
    range measured on ``calibration``, default the example inputs), so that ONNX Runtime runs
    every conv / matmul on its integer kernels (see :func:`penjing.export.qdq.calibrate_outputs`);
    without it only layers whose output feeds another int8 layer directly are fused.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {list(EXPORTERS)}, got {exporter!r}")
    _require("onnx", "onnxscript", *(("onnxruntime",) if check else ()))
    args = _as_tuple(example_inputs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ready, notes = export_ready(model)
    if exporter == "torchscript":
        only = next((n for n, m in ready.named_modules() if getattr(m, "dynamo_only", False)), None)
        if only is not None:
            raise ValueError(f"layer {only!r} (dynamic int8 Linear) is written with ONNX ops only the dynamo "
                             "exporter emits; use exporter='dynamo' or 'auto'")
    if quantize_outputs:
        from penjing.export.qdq import calibrate_outputs

        calib = args if calibration is None else _as_tuple(calibration)
        if calibrate_outputs(ready, calib):
            notes.append("int8 outputs quantized (8-bit, range from "
                         f"{'the example inputs' if calibration is None else 'the calibration batch'})")
    used, reason = exporter, None
    try:
        _run_exporter(ready, args, path, dynamo=exporter != "torchscript", opset=opset)
        used = "torchscript" if exporter == "torchscript" else "dynamo"
    except Exception as exc:  # noqa: BLE001 - any dynamo failure falls back, and is reported
        if exporter != "auto" or any(getattr(m, "dynamo_only", False) for m in ready.modules()):
            raise ValueError(_explain(ready, args, exc, "dynamo" if exporter == "auto" else exporter)) from exc
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
        try:
            _run_exporter(ready, args, path, dynamo=False, opset=min(opset, 17))
            used = "torchscript"
        except Exception as exc2:  # noqa: BLE001
            raise ValueError(_explain(ready, args, exc2, "torchscript")) from exc2
    from penjing.export.graph import int8_weights, store_int8_weights

    store_int8_weights(path)  # TorchScript writes float weights + QuantizeLinear: fold them
    packed = int8_weights(path)
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    result = ExportResult(path=path, exporter=used, opset=proto.opset_import[0].version,
                          bytes=path.stat().st_size, notes=notes, fallback_reason=reason,
                          int8_initializers=packed)
    if check:
        from penjing.export.check import max_rel_error, ort_outputs

        was_training = model.training
        with torch.no_grad():
            expected = model.eval()(*args)
        model.train(was_training)
        result.max_rel_error = max_rel_error(expected, ort_outputs(path, args))
        if rtol is not None and result.max_rel_error > rtol:
            raise ValueError(f"ONNX Runtime's output differs from PyTorch's by {result.max_rel_error:.2e} "
                             f"(max relative error), above rtol={rtol:g}")
    return result


def _explain(ready: nn.Module, args: tuple, exc: Exception, exporter: str) -> str:
    """An error naming the first layer that fails to export on its own."""
    layer = failing_layer(ready, args)
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    if layer is None:
        return f"ONNX export ({exporter}) failed: {first}"
    name, kind, why = layer
    return f"ONNX export failed at layer {name!r} ({kind}): {why}"


def failing_layer(model: nn.Module, args: tuple) -> tuple[str, str, str] | None:
    """``(name, type, reason)`` of the first leaf module that cannot be exported by itself,
    fed the inputs it sees on ``args`` (None when every leaf exports alone). Each leaf is
    probed with the TorchScript exporter, whose message names the missing operator."""
    seen: dict[str, tuple] = {}
    hooks = []
    for name, module in model.named_modules():
        if name and not list(module.children()):
            hooks.append(module.register_forward_pre_hook(
                lambda m, a, name=name: seen.setdefault(name, a) and None))
    try:
        with torch.no_grad():
            model(*args)
    except Exception as exc:  # noqa: BLE001 - the forward itself fails: name the last layer reached
        last = next(reversed(seen), None)
        return (last or "(root)", type(model.get_submodule(last)).__name__ if last else type(model).__name__,
                f"forward failed: {exc}")
    finally:
        for h in hooks:
            h.remove()
    with tempfile.TemporaryDirectory(prefix="penjing-export-probe-") as tmp:
        for name, inputs in seen.items():
            module = model.get_submodule(name)
            if not all(isinstance(a, torch.Tensor) for a in inputs) or getattr(module, "dynamo_only", False):
                continue  # (dynamic int8 layers have no TorchScript form to probe)
            try:
                _run_exporter(module, inputs, Path(tmp) / "layer.onnx", dynamo=False, opset=17)
            except Exception as exc:  # noqa: BLE001
                text = str(exc).strip().splitlines()
                return name, type(module).__name__, text[0][:300] if text else type(exc).__name__
    return None


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"ONNX export needs {', '.join(missing)}: pip install 'penjing[export]'")
