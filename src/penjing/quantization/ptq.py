"""``pj.quantize``: prepare fake quantization, calibrate it, and (for PTQ) freeze it.

Steps: fold BatchNorm into its producer; attach a :class:`WeightFakeQuant` parametrization to
every selected layer (after any mask or codebook already there); for static activations give
each layer an input :class:`ActFakeQuant` and run the calibration batches through the model
(progress bar) while observers record ranges, then freeze scales and zero-points. With
``mode="qat"`` the quantizers are left tracking (see :mod:`.qat`).

The call is a transaction: if calibration fails (a batch that does not fit, a layer that never
ran) every change is rolled back before the error is raised, so the user's model is float
again and a corrected retry works.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.modules.conv import _ConvTransposeNd
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear
from torch.utils.data import Subset
from tqdm.auto import tqdm

from penjing.core.batch import batch_size_of, batches, run_forward, to_device
from penjing.core.config import Run, verb
from penjing.core.layers import is_hf_conv1d, pick_layers
from penjing.core.params import attach, parametrizations, remove
from penjing.core.select import type_name
from penjing.quantization.config import QuantConfig
from penjing.quantization.fake_quant import (
    ActFakeQuant,
    WeightFakeQuant,
    attach_input_quant,
    detach_input_quant,
    dynamic_quant,
    input_quant,
)
from penjing.quantization.fold_bn import fold_batchnorm, unfold_batchnorm

#: the model's ``__dict__`` entry listing the ``[layer, bn]`` pairs :func:`quantize` folded
FOLDED = "_pj_folded_bn"
#: Layer types that get fake-quantized weights (output channels / rows on axis 0).
QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, nn.EmbeddingBag)
#: Of those, the ones whose input is a float activation (an Embedding's input is an index).
TAKES_ACTIVATIONS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def supports(name: str, module: nn.Module) -> str | None:
    """Why ``module`` cannot be quantized (None when it can)."""
    if isinstance(module, nn.MultiheadAttention):
        return ("nn.MultiheadAttention keeps its q/k/v projections packed in one in_proj_weight; "
                "rewrite it into separate nn.Linear layers to quantize them")
    if isinstance(module, NonDynamicallyQuantizableLinear):
        return ("the out_proj of an nn.MultiheadAttention is applied inside the attention's own "
                "functional forward, never called as a layer")
    if isinstance(module, _ConvTransposeNd):
        return "transposed convolutions have no quantizer in penjing"
    if not isinstance(module, QUANTIZABLE) and not is_hf_conv1d(module):
        return (f"{type_name(module)} has no quantizer (Linear, Conv1d/2d/3d, Embedding and Hugging "
                "Face Conv1D have)")
    return None


def takes_activations(module: nn.Module) -> bool:
    """Is ``module``'s input a float activation (not an Embedding's indices)?"""
    return isinstance(module, TAKES_ACTIVATIONS) or is_hf_conv1d(module)


def is_linear(module: nn.Module) -> bool:
    """A Linear, or a Hugging Face ``Conv1D`` (a Linear with its weight stored ``[in, out]``)."""
    return isinstance(module, nn.Linear) or is_hf_conv1d(module)


def out_axis(module: nn.Module) -> int:
    """The axis of ``module``'s weight that indexes output channels (per-channel scales)."""
    return 1 if is_hf_conv1d(module) else 0


def weight_quantizer(module: nn.Module) -> WeightFakeQuant | None:
    """The :class:`WeightFakeQuant` on ``module.weight``, if any."""
    for p in parametrizations(module):
        if isinstance(p, WeightFakeQuant):
            return p
    return None


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode, then give every submodule back its own train/eval flag."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def _take(batch: Any, n: int) -> Any:
    """The first ``n`` samples of ``batch`` (every tensor cut along its leading dimension)."""
    if isinstance(batch, torch.Tensor):
        return batch[:n] if batch.dim() else batch
    if isinstance(batch, Mapping):
        cut = {k: _take(v, n) for k, v in batch.items()}
        try:
            return type(batch)(cut)
        except Exception:  # noqa: BLE001 -- a mapping type that cannot be rebuilt from a dict
            return cut
    if isinstance(batch, tuple | list):
        return type(batch)(_take(v, n) for v in batch)
    return batch


def calibration_batches(data: Any, config: QuantConfig) -> list[Any]:
    """The calibration batches (any batch shape), at most ``calib_samples`` samples."""
    if data is None:
        raise ValueError("activation quantization needs calibration data: pass data=... (any batches), "
                         "or activations='none' for weight-only quantization")
    if isinstance(data, torch.Tensor):
        data = [data[i:i + config.calib_batch_size] for i in range(0, len(data), config.calib_batch_size)]
    if isinstance(data, torch.utils.data.Dataset) and config.calib_samples is not None:
        try:
            if len(data) > config.calib_samples:  # type: ignore[arg-type]
                data = Subset(data, range(config.calib_samples))
        except TypeError:
            pass
    out, seen = [], 0
    for batch in batches(data, batch_size=config.calib_batch_size):
        if config.calib_samples is not None and seen + batch_size_of(batch) > config.calib_samples:
            batch = _take(batch, config.calib_samples - seen)
        n = batch_size_of(batch)
        if n == 0 or (isinstance(batch, torch.Tensor) and batch.numel() == 0):
            continue
        out.append(batch)
        seen += n
        if config.calib_samples is not None and seen >= config.calib_samples:
            break
    if not out:
        raise ValueError("the calibration set is empty; give at least one sample")
    return out


def _describe(batch: Any) -> str:
    if isinstance(batch, torch.Tensor):
        return f"of shape {tuple(batch.shape)}"
    if isinstance(batch, Mapping):
        return "with keys " + ", ".join(f"{k}{tuple(v.shape) if isinstance(v, torch.Tensor) else ''}"
                                        for k, v in batch.items())
    if isinstance(batch, tuple | list) and batch and isinstance(batch[0], torch.Tensor):
        return f"of shape {tuple(batch[0].shape)}"
    return f"of type {type(batch).__name__}"


@torch.no_grad()
def run_calibration(model: nn.Module, data: list[Any], run: Run | None = None, *, progress: bool = True,
                    target: nn.Module | None = None) -> int:
    """Run the calibration batches through ``target`` (default ``model``) in eval mode (each
    submodule's own mode restored afterwards). Returns the number of samples seen; a batch the
    model cannot take raises a ``ValueError`` describing the batch."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    forward_fn = run.forward_fn if run is not None else None
    seen = 0
    with eval_mode(model):
        for batch in tqdm(data, desc="calibrate", disable=not progress, leave=False):
            try:
                run_forward(target if target is not None else model, to_device(batch, device), forward_fn)
            except (RuntimeError, TypeError, ValueError, IndexError) as exc:
                raise ValueError(f"calibration batch {_describe(batch)} does not fit "
                                 f"{type(model).__name__}: {str(exc).splitlines()[0] if str(exc) else exc!r}"
                                 ) from None
            seen += batch_size_of(batch)
    return seen


def calibrate(model: nn.Module, data: Any, config: QuantConfig, run: Run | None = None, *,
              target: nn.Module | None = None) -> int:
    """Observe the activations of ``model``'s input quantizers on ``data`` and freeze their
    ranges. A quantized layer that never ran is an error naming it (nothing is frozen then)."""
    quants = [(n, q) for n, q in model.named_modules() if isinstance(q, ActFakeQuant)]
    for _, q in quants:
        q.observer.reset()
        q.observe, q.enabled = True, False
    seen = run_calibration(model, calibration_batches(data, config), run,
                           progress=run.progress if run is not None else False, target=target)
    idle = [n.removesuffix(".input_quant") for n, q in quants if not q.observer.has_data]
    if idle:
        raise ValueError(f"quantize: layer(s) {', '.join(idle)} never ran during calibration, so their "
                         "input ranges are unknown; are they used in forward() with this data? "
                         "Leave them out with exclude=[...]")
    for _, q in quants:
        q.calibrate()
        q.observe, q.enabled = False, True
    return seen


def calibrate_hooks(model: nn.Module, data: list, run: Run | None, hooks: dict, names: list[str]) -> None:
    """Run ``data`` through ``model`` with ``hooks`` (module -> forward pre-hook) attached;
    a hooked layer that never ran is an error naming it."""
    ran: set[int] = set()
    handles = []
    for module, hook in hooks.items():
        def pre(m, args, hook=hook):
            ran.add(id(m))
            hook(m, args)
        handles.append(module.register_forward_pre_hook(pre))
    try:
        run_calibration(model, data, run, progress=run.progress if run is not None else False)
    finally:
        for h in handles:
            h.remove()
    idle = [n for n, m in zip(names, hooks, strict=True) if id(m) not in ran]
    if idle:
        raise ValueError(f"quantize: layer(s) {', '.join(idle)} never ran during calibration, so their "
                         "input ranges are unknown; are they used in forward() with this data? "
                         "Leave them out with exclude=[...]")


class _Undo:
    """What :func:`quantize` changed, to put back if calibration fails."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.folded: list = []
        self.layers: list[nn.Module] = []
        self.weights: list = []  # (tensor, original value) changed in place

    def rollback(self) -> None:
        from penjing.quantization.graph_ranges import drop_graph_ranges

        drop_graph_ranges(self.model)
        for module in self.layers:
            if input_quant(module) is not None or dynamic_quant(module) is not None:
                detach_input_quant(module)
            if weight_quantizer(module) is not None:
                remove(module, WeightFakeQuant)
        with torch.no_grad():
            for tensor, value in reversed(self.weights):
                tensor.copy_(value)
        unfold_batchnorm(self.model, self.folded)
        self.model.__dict__.pop(FOLDED, None)


@verb(QuantConfig)
def quantize(model: nn.Module, config: QuantConfig, run: Run) -> None:
    """Quantize ``model`` in place (fake quantization) and return it.

    ``pj.quantize(model, pj.QuantConfig(...), data=calibration)``. ``mode="ptq"``: weight
    scales are fitted to the weights and, with ``activations="static"``, input scales to the
    activations seen on ``data`` (any batches: tensors, ``(x, y)`` tuples, dicts or HF
    ``BatchEncoding``; ``forward_fn(model, batch)`` says how a batch feeds the model), then
    frozen. ``mode="qat"``: the same quantizers, left tracking for training with
    :func:`penjing.fit` and :class:`penjing.quantization.qat.FreezeQuantization`.
    ``int8=True`` (or :func:`penjing.convert` afterwards) swaps in real int8 kernels.
    Layers touched and skipped (with the reason) are in ``pj.last_report(model)``.
    """
    if any(weight_quantizer(m) is not None for m in model.modules()):
        raise ValueError("the model is already quantized; quantize a float model")
    layers = pick_layers(model, config.layers, config.exclude, verb="quantize", supports=supports,
                         report=run.report)
    bits = config.bits_per_layer(layers)
    static = config.activations == "static"
    if (static or config.smooth_alpha is not None) and run.data is None:
        raise ValueError("activation quantization needs calibration data: pass data=... (any batches), "
                         "or activations='none' for weight-only quantization")
    undo = _Undo(model)
    try:
        _prepare(model, config, run, layers, bits, undo)
    except BaseException:
        undo.rollback()
        raise
    for name, module in layers:
        run.report.touch(name, module, "fp32", _describe_layer(config, bits[name], module),
                         detail=f"{'QAT' if config.mode == 'qat' else 'PTQ'}")
    if undo.folded:
        run.report.note(f"folded {len(undo.folded)} BatchNorm layer(s) into their conv/linear")
    if config.int8:
        from penjing.quantization.int_kernels import convert_into

        convert_into(model, run.report, graph=config.int8_graph)


def _prepare(model: nn.Module, config: QuantConfig, run: Run, layers, bits, undo: _Undo) -> None:
    calib = None
    if config.activations == "static" or config.smooth_alpha is not None:
        calib = calibration_batches(run.data, config)  # bad data fails before any change
    if config.fold_bn:
        with eval_mode(model):
            fold_batchnorm(model, undo.folded)
        # which BNs went into which layer: a saved int8 graph replays these folds on a fresh model
        model.__dict__[FOLDED] = [[layer, bn] for layer, bn, *_ in undo.folded]
    factors: dict = {}
    if config.smooth_alpha is not None:
        from penjing.quantization.smooth import smooth_linears

        factors, note = smooth_linears(model, layers, calib, config, run, undo.weights)
        run.report.note(note)
        unsmoothed = [n for n, m in layers if is_hf_conv1d(m)]
        if unsmoothed:
            run.report.note(f"SmoothQuant migrates outliers of nn.Linear layers only: {len(unsmoothed)} Hugging "
                            f"Face Conv1D layers ({unsmoothed[0]}, ...) are quantized without it")
    qat = config.mode == "qat"
    for name, module in layers:
        spec = config.weight_spec(bits[name], axis=out_axis(module))
        undo.layers.append(module)
        with torch.no_grad():
            current = module.weight.detach()
        attach(module, WeightFakeQuant(current, spec, observer=config.observer, percentile=config.percentile,
                                       lsq=config.lsq and qat, observing=qat))
        if config.activations == "static" and takes_activations(module):
            attach_input_quant(module, ActFakeQuant(
                config.act_spec(), observer="moving_average" if qat and config.act_observer == "minmax"
                else config.act_observer, percentile=config.percentile, lsq=config.lsq and qat))
    if config.activations == "static":
        from penjing.quantization.graph_ranges import observe_graph

        observe_graph(model, calib, config, run, calibrate)
        if qat:
            for q in model.modules():
                if isinstance(q, ActFakeQuant):
                    q.observe = True  # keep tracking during training until frozen
    elif config.activations == "dynamic":
        from penjing.quantization.fake_quant import mark_dynamic

        for name, module in layers:
            if is_linear(module):
                mark_dynamic(module, factors.get(name))


def _describe_layer(config: QuantConfig, bits: int, module: nn.Module) -> str:
    weights = f"{bits}-bit {'per-channel' if config.per_channel else 'per-tensor'} weights"
    if not takes_activations(module) or config.weight_only:
        return weights + " (weight-only)"
    if config.activations == "dynamic":
        if is_linear(module):
            return weights + ", 8-bit dynamic per-row activations"
        return weights + " (weight-only: dynamic activations are for Linear)"
    return weights + f", {config.act_bits}-bit static activations"


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module, WeightFakeQuant, ActFakeQuant | None]]:
    """``(name, layer, weight quantizer, input quantizer or None)`` of a quantized model."""
    out = []
    for name, module in model.named_modules():
        wq = weight_quantizer(module)
        if wq is not None:
            out.append((name, module, wq, input_quant(module)))
    return out


def quantizable_layers(model: nn.Module, config: QuantConfig) -> list[tuple[str, nn.Module]]:
    """The layers :func:`quantize` would act on (skips are not recorded)."""
    from penjing.core.report import Report

    return pick_layers(model, config.layers, config.exclude, verb="quantize", supports=supports,
                       report=Report("quantize"))
