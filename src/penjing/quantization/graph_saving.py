"""Save and replay an int8 *graph* (``pj.convert``'s default on CNNs) without calibration data.

The int8 graph of :mod:`.int8_graph` is a deterministic function of three things: the fx trace
of the model (after its BatchNorms were folded), each graph layer's weight integers, weight
scales and input grid (:class:`~penjing.quantization.int8_graph.LayerQuant`), and the
calibrated range of every traced tensor (the output scales of sums and of layers no int8
layer consumes). :func:`record_graph` writes those down: a JSON-able dict plus a few tensors
per layer. :func:`replay_graph` redoes on a fresh float instance what ``quantize`` changed in
its structure (the BN folds, the biases they added), then runs the same graph builder with the
stored values in place of the observers, so the rebuilt model computes exactly what the saved
one did. Packed ``torch.ao`` weights, which cannot be stored portably, are never stored: they
are packed again from the integers.

Record (``format`` 1)::

    {"format": 1, "model": "ResNet", "folds": [[layer, bn], ...],
     "layers": {name: {"in_scale": float, "in_zero_point": int}},   # u8 grid
     "ranges": {node: [lo, hi]}, "nodes": [traced node names],      # checked on replay
     "modules": [...]}   # the layer-by-layer record (saving.py) of layers outside the graph

Tensors: ``{name}.weight`` (int8), ``{name}.weight_scale`` (float32), ``{name}.bias`` for each
graph layer. :func:`save_graph` / :func:`load_graph` put the record, those tensors and the
rest of the model's state (float layers, layer-by-layer int8 layers) in one ``.pjz``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from penjing.core import structure
from penjing.core.report import Report, record
from penjing.core.select import swap

FORMAT = 1
KEY = "__penjing_int8_graph__"
_MAX_RECORD = 1 << 24  # bytes of JSON a file may carry


def _inputs(model: nn.Module) -> dict:
    from penjing.quantization.int8_graph import INPUTS, int8_graph

    inputs = model.__dict__.get(INPUTS)
    if int8_graph(model) is None or inputs is None:
        raise ValueError(f"record_graph: {type(model).__name__} was not converted to an int8 graph "
                         "(pj.convert builds one for statically calibrated CNNs)")
    return inputs


def record_graph(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """The JSON-able record and the tensors that rebuild ``model``'s int8 graph (see above).
    The record's ``modules`` list holds the layer-by-layer entries of :mod:`.saving` for the
    int8 layers the graph did not take (and the ``Identity`` modules of folded BNs)."""
    from penjing.quantization.ptq import FOLDED

    inputs = _inputs(model)
    layers, tensors = {}, {}
    for name, q in inputs["quants"].items():
        layers[name] = {"in_scale": q.in_scale, "in_zero_point": q.in_zero_point}
        tensors[f"{name}.weight"] = q.codes.clone()
        tensors[f"{name}.weight_scale"] = q.scale.clone()
        bias = _original_bias(model, name)
        if bias is not None:
            tensors[f"{name}.bias"] = bias
    ranges = {k: [lo, hi] for k, (lo, hi) in inputs["ranges"].items()}
    rec = {"format": FORMAT, "model": type(model).__name__, "folds": model.__dict__.get(FOLDED, []),
           "layers": layers, "ranges": ranges, "nodes": list(inputs["nodes"]), "modules": _layer_entries(model)}
    return rec, tensors


def _original_bias(model: nn.Module, name: str) -> torch.Tensor | None:
    module = model.get_submodule(name)
    bias = module.bias() if callable(getattr(module, "bias", None)) else getattr(module, "bias", None)
    return None if bias is None else bias.detach().float().clone()


def _layer_entries(model: nn.Module) -> list[dict]:
    """:mod:`.saving`'s layer-by-layer record of the modules outside the graph."""
    from penjing.quantization.saving import _record

    class _View(nn.Module):  # _record refuses the graph model itself; it reads its modules only
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.m = inner

    return [{**e, "name": e["name"].removeprefix("m.")} for e in _record(_View(model))]


def _check(rec: dict, where: str) -> None:
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise ValueError(f"{where}: int8 graph record format {rec.get('format') if isinstance(rec, dict) else rec!r}, "
                         f"expected {FORMAT}")
    for key, kind in (("folds", list), ("layers", dict), ("ranges", dict), ("nodes", list), ("modules", list)):
        if not isinstance(rec.get(key), kind):
            raise ValueError(f"{where}: int8 graph record lacks {key!r}")
    for node, bounds in rec["ranges"].items():
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(v, float | int) and math.isfinite(v)
                                                                    for v in bounds)):
            raise ValueError(f"{where}: bad range for {node!r}: {bounds!r}")
    for name, layer in rec["layers"].items():
        scale, zp = layer.get("in_scale"), layer.get("in_zero_point")
        if not (isinstance(scale, float) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"{where}: layer {name!r}: input scale {scale!r} is not a positive number")
        if not (isinstance(zp, int) and 0 <= zp <= 255):
            raise ValueError(f"{where}: layer {name!r}: input zero-point {zp!r} is not on the 0..255 grid")


def _take(state: dict, key: str, where: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"{where}: the int8 graph needs {key!r}, which is not there")
    return state.pop(key)


def replay_graph(model: nn.Module, rec: dict, state: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild the int8 graph described by ``rec`` (from :func:`record_graph`) on ``model``, a
    fresh float instance of the same architecture, in place; ``state`` holds the record's
    tensors and the rest of the saved model's state (consumed). Returns ``model`` in eval mode."""
    from penjing.quantization.fold_bn import after_norm
    from penjing.quantization.graph_ranges import trace
    from penjing.quantization.int8_graph import LayerQuant, _skip_identities, build_int8_graph
    from penjing.quantization.saving import _int8_layer

    where = f"replay_graph({type(model).__name__})"
    _check(rec, where)
    model.eval()
    names = {n for n, _ in model.named_modules()}
    for layer, bn in rec["folds"]:
        if layer not in names or bn not in names:
            raise ValueError(f"{where}: the record folds {bn!r} into {layer!r}, which this model does not have; "
                             "is it the same architecture?")
        swap(model, bn, after_norm(model.get_submodule(bn)))
    quants = {}
    for name, layer in rec["layers"].items():
        if name not in names or not isinstance(model.get_submodule(name), nn.Conv2d | nn.Linear):
            raise ValueError(f"{where}: the record has an int8 layer {name!r} that is no Conv2d/Linear of this model")
        module = model.get_submodule(name)
        codes = _take(state, f"{name}.weight", where)
        scale = _take(state, f"{name}.weight_scale", where)
        if codes.dtype != torch.int8 or tuple(codes.shape) != tuple(module.weight.shape):
            raise ValueError(f"{where}: {name}.weight is {codes.dtype} {tuple(codes.shape)}, the layer needs "
                             f"int8 {tuple(module.weight.shape)}")
        if scale.dtype != torch.float32 or scale.numel() not in (1, codes.shape[0]) or not bool((scale > 0).all()):
            raise ValueError(f"{where}: {name}.weight_scale must be {codes.shape[0]} positive float32 scales")
        bias = state.pop(f"{name}.bias", None)
        if bias is not None and tuple(bias.shape) != (codes.shape[0],):
            raise ValueError(f"{where}: {name}.bias has shape {tuple(bias.shape)}, expected ({codes.shape[0]},)")
        module.bias = None if bias is None else nn.Parameter(bias.float())  # a folded BN's bias included
        quants[name] = LayerQuant(codes, scale.reshape(-1), float(layer["in_scale"]), int(layer["in_zero_point"]))
    for entry in rec["modules"]:  # folded BNs' Identities, the int8 layers outside the graph
        if entry.get("name") not in names:
            raise ValueError(f"{where}: the record has layer {entry.get('name')!r}, which this model does not")
        swap(model, entry["name"], nn.Identity() if entry.get("kind") == "Identity" else _int8_layer(entry, state, model))
    # the float rest, before the graph replaces the graph layers (torch.ao modules cannot load partially)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k.rpartition(".")[0] not in quants]
    if result.unexpected_keys or missing:
        raise ValueError(f"{where}: the saved state does not fit: unexpected {result.unexpected_keys[:5]}, "
                         f"missing {missing[:5]}")
    gm = trace(model)
    if gm is None:
        raise ValueError(f"{where}: torch.fx cannot trace this model, so its int8 graph cannot be rebuilt")
    _skip_identities(gm)
    if [n.name for n in gm.graph.nodes] != rec["nodes"]:
        raise ValueError(f"{where}: this model's traced graph differs from the saved one; is it the same "
                         "architecture (and the same forward)?")
    ranges = {k: (float(lo), float(hi)) for k, (lo, hi) in rec["ranges"].items()}
    report = Report("load")
    why = build_int8_graph(model, report, quants=quants, ranges=ranges)
    if why is not None:
        raise ValueError(f"{where}: the int8 graph could not be rebuilt: {why}")
    built = {change.name for change in report.touched}
    if built != set(rec["layers"]):
        raise ValueError(f"{where}: rebuilt int8 layers {sorted(built)} differ from the saved ones")
    record(model, report)
    return model.eval()


def graph_state(model: nn.Module, rec: dict) -> dict[str, torch.Tensor]:
    """The model's state outside the graph layers (their packed torch.ao entries stay out)."""
    graph = tuple(f"{name}." for name in rec["layers"])
    return {k: v for k, v in model.state_dict().items()
            if not k.startswith(graph) and isinstance(v, torch.Tensor) and not v.is_quantized}


def graph_file_state(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Every tensor a ``.pjz`` of the int8-graph ``model`` holds (record, graph tensors, the rest
    of its state); ``None`` for a model that runs no int8 graph. Registered with
    :func:`penjing.core.structure.register_format`, so ``pj.save`` writes graph models this way."""
    from penjing.quantization.int8_graph import int8_graph

    if int8_graph(model) is None:
        return None
    rec, tensors = record_graph(model)
    state = graph_state(model, rec)
    clash = (set(state) & set(tensors)) | ({KEY} & set(state))
    if clash:
        raise ValueError(f"save: tensor names used twice: {sorted(clash)[:5]}")
    state.update(tensors)
    raw = json.dumps(rec).encode()
    state[KEY] = torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone()
    return state


def save_graph(model: nn.Module, path: str | Path):
    """Write the int8-graph ``model`` to ``path`` (``.pjz``): record, tensors, the rest of its state."""
    from penjing.codec import save

    state = graph_file_state(model)
    if state is None:
        _inputs(model)  # raises: the model runs no int8 graph
    return save(state, path)


def is_graph_file(state: dict) -> bool:
    return KEY in state


def load_graph(state: dict, model: nn.Module, path: str | Path) -> nn.Module:
    """Rebuild the int8 graph stored in ``state`` (the loaded ``.pjz``) on the fresh ``model``."""
    raw = state.pop(KEY)
    if raw.dtype != torch.uint8 or raw.dim() != 1 or raw.numel() > _MAX_RECORD:
        raise ValueError(f"load_quantized: {path}: bad int8 graph record ({raw.dtype}, {tuple(raw.shape)})")
    try:
        rec = json.loads(bytes(raw.tolist()).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"load_quantized: {path}: unreadable int8 graph record ({exc})") from None
    return replay_graph(model, rec, state)


def _load_registered(state: dict, model: nn.Module, path: str) -> nn.Module:
    return load_graph(dict(state), model, path).eval()


structure.register_format(KEY, graph_file_state, _load_registered)
