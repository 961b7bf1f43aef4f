"""``penjing.quantization``: prepare fake quantization, calibrate it, and (for PTQ) freeze it.

Steps: fold BatchNorm into its producer; attach a :class:`WeightFakeQuant` parametrization to
every selected Linear / Conv (after any mask or codebook already there); for weight+activation
quantization give each layer an input :class:`ActFakeQuant`, run the calibration batches
through the model (progress bar) while observers record ranges, then freeze scales and
zero-points. With ``mode="qat"`` the quantizers are left tracking (see :mod:`.qat`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from tqdm.auto import tqdm

from penjing.core.params import attach, parametrizations
from penjing.core.select import select
from penjing.quantization.config import QuantConfig
from penjing.quantization.fake_quant import (
    ActFakeQuant,
    WeightFakeQuant,
    attach_input_quant,
    input_quant,
)
from penjing.quantization.fold_bn import fold_batchnorm

#: Layer types that get fake-quantized weights (output channels on axis 0).
QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

Calibration = Dataset | DataLoader | torch.Tensor | Iterable


def quantizable_layers(model: nn.Module, config: QuantConfig) -> list[tuple[str, nn.Module]]:
    layers = list(select(model, config.layers, exclude=config.exclude, types=QUANTIZABLE))
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no quantizable layers (Linear, Conv1d/2d/3d) matching "
            f"layers={config.layers!r}; nothing to quantize"
        )
    return layers


def weight_quantizer(module: nn.Module) -> WeightFakeQuant | None:
    """The :class:`WeightFakeQuant` on ``module.weight``, if any."""
    for p in parametrizations(module):
        if isinstance(p, WeightFakeQuant):
            return p
    return None


def _batches(data: Calibration, config: QuantConfig) -> list[torch.Tensor]:
    """The calibration inputs as a list of tensors, at most ``calib_samples`` samples."""
    if isinstance(data, torch.Tensor):
        data = TensorDataset(data)
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        try:
            n = len(data)  # type: ignore[arg-type]
        except TypeError:
            n = None
        if n == 0:
            raise ValueError("the calibration set is empty; give at least one sample")
        if config.calib_samples is not None and n is not None and n > config.calib_samples:
            data = Subset(data, range(config.calib_samples))
        data = DataLoader(data, batch_size=config.calib_batch_size, shuffle=False)
    out, seen = [], 0
    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"calibration batches must be tensors (or (x, y) tuples), got {type(x).__name__}")
        if config.calib_samples is not None:
            x = x[: config.calib_samples - seen]
        if x.numel() == 0:
            continue
        out.append(x)
        seen += len(x)
        if config.calib_samples is not None and seen >= config.calib_samples:
            break
    if not out:
        raise ValueError("the calibration set is empty; give at least one sample")
    return out


@torch.no_grad()
def calibrate(model: nn.Module, data: Calibration, config: QuantConfig) -> int:
    """Run ``data`` through ``model`` with activation observers recording; freeze the ranges.

    Returns the number of samples seen. A batch the model cannot take raises a
    ``ValueError`` naming the batch shape.
    """
    quants = [q for q in model.modules() if isinstance(q, ActFakeQuant)]
    batches = _batches(data, config)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    for q in quants:
        q.observer.reset()
        q.observe, q.enabled = True, False
    seen = 0
    for x in tqdm(batches, desc="calibrate", disable=not config.progress, leave=False):
        try:
            model(x.to(device))
        except RuntimeError as exc:
            raise ValueError(
                f"calibration batch of shape {tuple(x.shape)} does not fit {type(model).__name__}: "
                f"{str(exc).splitlines()[0]}"
            ) from None
        seen += len(x)
    for q in quants:
        if not q.observer.has_data:
            raise ValueError("a quantized layer never ran during calibration; is it used in forward()?")
        q.calibrate()
        q.observe, q.enabled = False, True
    model.train(was_training)
    return seen


def quantize(model: nn.Module, config: QuantConfig | None = None, calibration: Calibration | None = None) -> nn.Module:
    """Quantize ``model`` in place (fake quantization) and return it.

    ``config.mode="ptq"``: scales are fitted to the weights and, unless ``act_bits`` is None,
    to the activations seen on ``calibration`` (a Dataset, DataLoader, tensor or iterable of
    batches), then frozen. ``"qat"``: the same quantizers, left tracking for training with
    :func:`penjing.fit` and :class:`penjing.quantization.qat.FreezeQuantization`.
    Run :func:`penjing.quantization.convert` afterwards for real int8 execution.
    """
    config = config or QuantConfig()
    layers = quantizable_layers(model, config)
    if not config.weight_only and calibration is None:
        raise ValueError("activation quantization needs calibration data; pass calibration=... "
                         "or act_bits=None for weight-only quantization")
    if any(weight_quantizer(m) is not None for _, m in layers):
        raise ValueError("the model is already quantized; quantize a float model")
    if config.fold_bn:
        was_training = model.training
        model.eval()
        fold_batchnorm(model)
        model.train(was_training)
        layers = quantizable_layers(model, config)
    qat = config.mode == "qat"
    for name, module in layers:
        spec = config.weight_spec(name, axis=0)
        with torch.no_grad():
            current = module.weight.detach()
        attach(module, WeightFakeQuant(current, spec, observer=config.observer, percentile=config.percentile,
                                       lsq=config.lsq and qat, observing=qat))
        if not config.weight_only:
            attach_input_quant(module, ActFakeQuant(
                config.act_spec(), observer="moving_average" if qat and config.act_observer == "minmax"
                else config.act_observer, percentile=config.percentile, lsq=config.lsq and qat))
    if not config.weight_only:
        calibrate(model, calibration, config)
        if qat:
            for q in model.modules():
                if isinstance(q, ActFakeQuant):
                    q.observe = True  # keep tracking during training until frozen
    return model


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module, WeightFakeQuant, ActFakeQuant | None]]:
    """``(name, layer, weight quantizer, input quantizer or None)`` of a quantized model."""
    out = []
    for name, module in model.named_modules():
        wq = weight_quantizer(module)
        if wq is not None:
            out.append((name, module, wq, input_quant(module)))
    return out
