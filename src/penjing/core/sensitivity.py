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


@dataclass(frozen=True)
class PathStep:
    """One move along a :func:`budget_path`: ``layer`` goes to ``setting``; ``saved`` and
    ``drop`` are the totals over all layers once this move is made (units of ``saving``; the
    predicted metric drop, the sum of each layer's own measured drop)."""

    layer: str
    setting: Any
    saved: float
    drop: float


def budget_path(scan: Any, saving: Callable[[str, Any], float]) -> list[PathStep]:
    """The order in which to compress layers further, cheapest first, from a scan's curves.

    ``scan`` has ``baseline`` and ``curves`` (a :class:`ScanResult`, or a method's own result
    such as pruning's); each curve lists settings from mildest to strongest. ``saving(layer,
    setting)`` is what that setting saves on that layer (e.g. weights removed). At every move
    the layer whose next setting costs the least metric per unit saved goes one setting
    further (a layer's drop is its measured drop, made non-decreasing along its curve, so noise
    never makes a stronger setting look free); ties go to the layer that has moved least, so
    equally cheap layers advance together. A prefix of the path is a budget: every layer at the
    last setting the prefix gave it. Layers only ever get stronger along the path.
    """
    drops: dict[str, list[float]] = {}
    for layer, curve in scan.curves.items():
        worst, out = 0.0, []
        for _, value in curve:
            worst = max(worst, scan.baseline - value)
            out.append(worst)
        drops[layer] = out
    at = {layer: -1 for layer in scan.curves}  # index into the curve; -1: not compressed yet
    saved_now = {layer: 0.0 for layer in scan.curves}
    order = {layer: i for i, layer in enumerate(scan.curves)}
    path: list[PathStep] = []
    total_saved = total_drop = 0.0
    while True:
        best, best_key = None, None
        for layer, curve in scan.curves.items():
            nxt = at[layer] + 1
            if nxt >= len(curve):
                continue
            gain = saving(layer, curve[nxt][0]) - saved_now[layer]
            cost = drops[layer][nxt] - (drops[layer][at[layer]] if at[layer] >= 0 else 0.0)
            key = (cost / gain if gain > 0 else float("inf"), nxt, order[layer])
            if best_key is None or key < best_key:
                best, best_key = layer, key
        if best is None:
            return path
        nxt = at[best] + 1
        setting = scan.curves[best][nxt][0]
        new_saved = saving(best, setting)
        total_saved += new_saved - saved_now[best]
        total_drop += drops[best][nxt] - (drops[best][at[best]] if at[best] >= 0 else 0.0)
        at[best], saved_now[best] = nxt, new_saved
        path.append(PathStep(best, setting, total_saved, total_drop))


def budget_at(path: Sequence[PathStep], saved: float, layers: Sequence[str],
              none: Any = None) -> dict[str, Any]:
    """Each layer's setting at the first point of ``path`` that saves at least ``saved``
    (the whole path when none does); layers the prefix has not reached get ``none``."""
    chosen = {layer: none for layer in layers}
    for step in path:
        chosen[step.layer] = step.setting
        if step.saved >= saved:
            break
    return chosen
