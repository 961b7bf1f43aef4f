"""Save an int8-converted model to ``.pjz`` and load it into a fresh float instance.

The file is the codec's (``penjing.save``: every tensor in its smallest form, no pickle) plus
one uint8 tensor holding a JSON *structure record*: which submodules are int8 layers (with
their mode, backend, fused ReLU, input grid, conv geometry) and which became ``Identity``
(folded BatchNorms, ReLUs fused into a kernel). :func:`load_quantized` rebuilds those modules
on a freshly built float model from the stored integers and scales, without calibration data,
so the result computes exactly what the saved int8 model did.

Supported: models converted layer by layer (``pj.convert(model, graph=False)``, and every
model the int8 graph does not apply to: static, dynamic per-row or weight-only layers, int8
embeddings). A model running the int8 graph (``pj.convert``'s default on CNNs) is saved and
replayed by :mod:`.graph_saving`, which these two functions call.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from penjing.core.select import swap
from penjing.quantization.int_kernels import Int8Conv2d, Int8Embedding, Int8Linear, _Int8Base

KEY = "__penjing_quantized_structure__"
FORMAT = 1
_MAX_RECORD = 1 << 24  # bytes of JSON a file may carry


def _record(model: nn.Module) -> list[dict]:
    from penjing.quantization.int8_graph import int8_graph

    if int8_graph(model) is not None:
        raise ValueError("save_quantized: this model was converted with graph=True (torch.ao packed "
                         "modules and an fx graph), which .pjz cannot describe yet; convert with "
                         "pj.convert(model) (layer by layer) to save it")
    out = []
    for name, m in model.named_modules():
        if not name:
            continue
        if isinstance(m, _Int8Base):
            entry = {"name": name, "kind": type(m).__name__, "mode": m.mode, "backend": m.backend,
                     "fused_relu": bool(m.fused_relu), "in_qrange": [m.in_qmin, m.in_qmax]}
            if isinstance(m, Int8Conv2d):
                entry.update(stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups,
                             padding_arg=getattr(m, "padding_arg", m.padding),
                             padding_mode=getattr(m, "padding_mode", "zeros"))
            out.append(entry)
        elif isinstance(m, Int8Embedding):
            out.append({"name": name, "kind": "Int8Embedding", "padding_idx": m.padding_idx})
        elif type(m) is nn.Identity:
            out.append({"name": name, "kind": "Identity"})
        elif "parametrizations" in m._modules:
            raise ValueError(f"save_quantized: layer {name} is still fake-quantized; convert the model "
                             "(pj.convert) first, or save the fake-quantized model with pj.save")
    return out


def save_quantized(model: nn.Module, path: str | Path):
    """Write the int8 ``model`` and its structure record to ``path`` (``.pjz``); returns the
    codec's ``FileInfo``."""
    from penjing.codec import save
    from penjing.quantization.int8_graph import int8_graph

    if int8_graph(model) is not None:  # pj.convert's int8 graph: its own record (graph_saving.py)
        from penjing.quantization.graph_saving import save_graph

        return save_graph(model, path)
    record = json.dumps({"format": FORMAT, "modules": _record(model)}).encode()
    state = dict(model.state_dict())
    if KEY in state:
        raise ValueError(f"save_quantized: the model has a tensor named {KEY!r}")
    state[KEY] = torch.frombuffer(bytearray(record), dtype=torch.uint8).clone()
    return save(state, path)


def _tensor(state: dict, key: str, where: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"load_quantized: {where} needs {key!r}, which the file does not hold")
    return state.pop(key)


def _int8_layer(entry: dict, state: dict, fresh: nn.Module) -> nn.Module:
    name, kind = entry["name"], entry["kind"]
    weight = _tensor(state, f"{name}.weight", name)
    if weight.dtype != torch.int8:
        raise ValueError(f"load_quantized: {name}.weight must be int8, got {weight.dtype}")
    scale = _tensor(state, f"{name}.weight_scale", name)
    zp = _tensor(state, f"{name}.weight_zero_point", name)
    if scale.numel() != weight.shape[0] or zp.numel() != weight.shape[0]:
        raise ValueError(f"load_quantized: {name}: {weight.shape[0]} rows but {scale.numel()} scales")
    if kind == "Int8Embedding":
        return Int8Embedding(weight, scale, zp, entry.get("padding_idx"))
    bias = state.pop(f"{name}.bias", None)
    smooth = state.pop(f"{name}.smooth", None)
    in_scale = _tensor(state, f"{name}.input_scale", name)
    in_zp = _tensor(state, f"{name}.input_zero_point", name)
    if kind == "Int8Linear":
        module = Int8Linear(weight, scale, zp, bias, None, entry["backend"], entry["mode"])
        module.register_buffer("smooth", smooth)
    elif kind == "Int8Conv2d":
        module = Int8Conv2d(weight, scale, zp, bias, None, entry["backend"], stride=entry["stride"],
                            padding=entry["padding"], dilation=entry["dilation"], groups=entry["groups"])
        module.mode = entry["mode"]
        module.padding_arg = entry["padding_arg"] if isinstance(entry["padding_arg"], str) else list(entry["padding_arg"])
        module.padding_mode = entry["padding_mode"]
    else:
        raise ValueError(f"load_quantized: unknown layer kind {kind!r} for {name}")
    module.input_scale.copy_(in_scale.reshape(()))
    module.input_zero_point.copy_(in_zp.reshape(()))
    module.in_qmin, module.in_qmax = (int(v) for v in entry["in_qrange"])
    module.fused_relu = bool(entry["fused_relu"])
    return module


def load_quantized(path: str | Path, model: nn.Module) -> nn.Module:
    """Rebuild the int8 model saved at ``path`` on ``model`` (a fresh float instance of the
    same architecture), in place; returns it in eval mode, ready to run."""
    from penjing.codec import load

    state = dict(load(path))
    from penjing.quantization.graph_saving import is_graph_file, load_graph

    if is_graph_file(state):
        return load_graph(state, model, path)
    if KEY not in state:
        raise ValueError(f"load_quantized: {path} holds no quantized-model structure (saved with pj.save, "
                         "not save_quantized); load it with model.load_state_dict(pj.load(path))")
    raw = state.pop(KEY)
    if raw.dtype != torch.uint8 or raw.dim() != 1 or raw.numel() > _MAX_RECORD:
        raise ValueError(f"load_quantized: {path}: bad structure record ({raw.dtype}, {tuple(raw.shape)})")
    try:
        record = json.loads(bytes(raw.tolist()).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"load_quantized: {path}: unreadable structure record ({exc})") from None
    if record.get("format") != FORMAT:
        raise ValueError(f"load_quantized: {path}: structure format {record.get('format')!r}, expected {FORMAT}")
    names = {n for n, _ in model.named_modules()}
    for entry in record["modules"]:
        if entry["name"] not in names:
            raise ValueError(f"load_quantized: {path} has layer {entry['name']!r}, which "
                             f"{type(model).__name__} does not; is it the same architecture?")
        if entry["kind"] == "Identity":
            if type(model.get_submodule(entry["name"])) is not nn.Identity:
                swap(model, entry["name"], nn.Identity())
            continue
        swap(model, entry["name"], _int8_layer(entry, state, model))
    # a float conv/linear that received a folded BatchNorm gained a bias the fresh one may lack
    for key in list(state):
        module_name, _, leaf = key.rpartition(".")
        if leaf == "bias" and module_name in names:
            m = model.get_submodule(module_name)
            if getattr(m, "bias", 0) is None:
                m.bias = nn.Parameter(torch.empty_like(state[key]))
    result = model.load_state_dict(state, strict=False)
    rebuilt = {e["name"] for e in record["modules"] if e["kind"] != "Identity"}
    missing = [k for k in result.missing_keys if k.rpartition(".")[0] not in rebuilt]
    if result.unexpected_keys or missing:
        raise ValueError(f"load_quantized: {path} does not fit {type(model).__name__}: unexpected "
                         f"{result.unexpected_keys[:5]}, missing {missing[:5]}")
    return model.eval()
