"""The one sensitivity runner: apply a method to one layer at a time, at each of several
settings, evaluate, restore.

Pruning (sparsity), sharing (bits), quantization (bits) and low-rank (rank) all ask the same
question -- how much does the model's metric move when only this layer is compressed this much?
-- so they share this loop and only say how to apply their method to one layer::

    scan = sensitivity_scan(model, layers, settings=[0.5, 0.9],
                            apply=lambda model, name, s: prune_one(model, name, s),
                            data=val, metric=None)          # default metric: top-1 accuracy

Each trial runs on a copy, so the user's model is never changed: ``restore="layer"`` copies
only the layer (the method changes nothing else; cheap on big models), ``restore="model"``
copies the whole model (methods such as structured pruning that reshape the neighbours too).
Evaluation follows the batch protocol of :mod:`penjing.core.batch` (``forward_fn``,
``metric(outputs, batches)``), in eval mode under ``no_grad``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from penjing.core import report as _report
from penjing.core.batch import ForwardFn, Metric, accuracy, batches, run_forward, to_device
from penjing.core.select import swap

#: ``apply(model, layer_name, setting)``: compress layer ``layer_name`` of ``model`` (a trial
#: copy) at ``setting``; raise :class:`Unsupported` when the setting cannot apply to that layer.
Apply = Callable[[nn.Module, str, Any], None]


class Unsupported(ValueError):
    """Raised by ``apply`` when a setting does not apply to a layer (the scan records a gap)."""


@dataclass
class ScanResult:
    """Metric of the model with one layer compressed at a time.

    ``curves[layer]`` lists ``(setting, metric)`` in the order of the settings tried;
    ``skipped[layer]`` says why a layer has no (or a shorter) curve.
    """

    baseline: float
    curves: dict[str, list[tuple[Any, float]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def measure(model: nn.Module, data: Any, *, forward_fn: ForwardFn | None = None,
            metric: Metric | None = None) -> float:
    """``metric(outputs, batches)`` of ``model`` over ``data`` (default: top-1 accuracy), in
    eval mode without gradients; the model's mode is restored."""
    if data is None:
        raise ValueError("a sensitivity scan evaluates the model: pass data= (validation batches)")
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    outputs, seen = [], []
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches(data):
                batch = to_device(batch, device)
                out = run_forward(model, batch, forward_fn)
                outputs.append(out)
                seen.append(batch)
    finally:
        model.train(was_training)
    return float((metric or accuracy)(outputs, seen))


def _trial_model(model: nn.Module, name: str, restore: str) -> tuple[nn.Module, nn.Module | None]:
    """The model to change in one trial and, for ``restore="layer"``, the original layer."""
    if restore == "model":
        return copy.deepcopy(model), None
    original = model.get_submodule(name)
    if not name:
        return copy.deepcopy(model), None
    swap(model, name, copy.deepcopy(original))
    return model, original


def sensitivity_scan(model: nn.Module, layers: Sequence[str], settings: Sequence[Any], apply: Apply,
                     data: Any, *, forward_fn: ForwardFn | None = None, metric: Metric | None = None,
                     restore: Literal["layer", "model"] = "layer",
                     stop_on_unsupported: bool = True) -> ScanResult:
    """For each layer name in ``layers`` and each of ``settings``: apply the method to that
    layer alone (``apply(trial, name, setting)``), measure the metric on ``data``, restore.

    ``model`` is left exactly as it was (its layers are put back even when ``apply`` raises).
    When ``apply`` raises :class:`Unsupported`, the layer's curve ends there (with
    ``stop_on_unsupported``) and the reason is kept in ``skipped``.
    """
    if not settings:
        raise ValueError("a sensitivity scan needs at least one setting to try")
    if restore not in ("layer", "model"):
        raise ValueError(f"restore must be 'layer' or 'model', got {restore!r}")
    result = ScanResult(baseline=measure(model, data, forward_fn=forward_fn, metric=metric))
    last = _report._LAST.get(model)  # a verb run on a trial must not replace the model's report
    try:
        _scan(model, layers, settings, apply, data, forward_fn, metric, restore,
              stop_on_unsupported, result)
    finally:
        if last is not None:
            _report.record(model, last)
        else:
            _report._LAST.pop(model, None)
    return result


def _scan(model, layers, settings, apply, data, forward_fn, metric, restore, stop_on_unsupported,
          result: ScanResult) -> None:
    for name in layers:
        curve = []
        for setting in settings:
            trial, original = _trial_model(model, name, restore)
            try:
                apply(trial, name, setting)
                curve.append((setting, measure(trial, data, forward_fn=forward_fn, metric=metric)))
            except Unsupported as exc:
                result.skipped[name or "(root)"] = str(exc)
                if stop_on_unsupported:
                    break
            finally:
                if original is not None:
                    swap(model, name, original)
        if curve:
            result.curves[name or "(root)"] = curve
