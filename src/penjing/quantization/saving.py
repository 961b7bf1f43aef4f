"""Int8 models and folded BatchNorms in the structure record (:mod:`penjing.core.structure`).

``pj.save`` of an int8-converted model writes the codec's tensors plus an ``int8`` step:
which submodules are int8 layers (with their mode, backend, fused ReLU, input grid, conv
geometry) and which became ``Identity`` (folded BatchNorms, ReLUs fused into a kernel).
``pj.load(path, FreshModel())`` rebuilds those modules on the freshly built float model from
the stored integers and scales, without calibration data, so the result computes exactly what
the saved int8 model did. A ``fold_bn`` step (noted by :func:`~penjing.quantization.fold_bn.
fold_batchnorm`) does the same for a fake-quantized model whose BatchNorms were folded.

:func:`save_quantized` / :func:`load_quantized` are the int8 entry points of before; they now
check the model is converted and call ``pj.save`` / ``pj.load``. Files they wrote before (the
record under ``__penjing_quantized_structure__``) still load.

Supported: models converted layer by layer (``pj.convert(model, graph=False)``, and every
model the int8 graph does not apply to: static, dynamic per-row or weight-only layers, int8
embeddings). A model running the int8 graph (``pj.convert``'s default on CNNs) is saved and
replayed by :mod:`.graph_saving`, which these two functions call.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from penjing.core import structure
from penjing.core.select import swap
from penjing.quantization.graph_ranges import ATTR as RANGES
from penjing.quantization.graph_ranges import GraphRanges
from penjing.quantization.int_kernels import Int8Conv2d, Int8Embedding, Int8Linear, _Int8Base

KIND = "int8"


def _refuse_graph(model: nn.Module, who: str) -> None:
    from penjing.quantization.int8_graph import int8_graph

    if int8_graph(model) is not None:
        raise ValueError(f"{who}: this model was converted with graph=True (torch.ao packed "
                         "modules and an fx graph), which .pjz cannot describe yet; convert with "
                         "pj.convert(model) (layer by layer) to save it")


def _record(model: nn.Module) -> list[dict]:
    """The int8 step of ``model`` (``[]`` when it has no int8 layer)."""
    _refuse_graph(model, "save")
    if not any(isinstance(m, _Int8Base | Int8Embedding) for m in model.modules()):
        return []
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
    return [{"kind": KIND, "modules": out}]


def _tensor(state, key: str, where: str) -> torch.Tensor:
    if key not in state:
        raise structure.mismatch(where, KIND, f"needs {key!r}, which the file does not hold")
    return state[key]


def _int8_layer(entry: dict, state) -> nn.Module:
    name, kind = entry["name"], entry["kind"]
    weight = _tensor(state, f"{name}.weight", name)
    if weight.dtype != torch.int8:
        raise ValueError(f"bad structure record: {name}.weight must be int8, got {weight.dtype}")
    scale = _tensor(state, f"{name}.weight_scale", name)
    zp = _tensor(state, f"{name}.weight_zero_point", name)
    if scale.numel() != weight.shape[0] or zp.numel() != weight.shape[0]:
        raise ValueError(f"bad structure record: {name}: {weight.shape[0]} rows but {scale.numel()} scales")
    if kind == "Int8Embedding":
        return Int8Embedding(weight, scale, zp, entry.get("padding_idx"))
    bias = state.get(f"{name}.bias")
    smooth = state.get(f"{name}.smooth")
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
        raise ValueError(f"bad structure record: unknown int8 layer kind {kind!r} for {name}")
    module.input_scale.copy_(in_scale.reshape(()))
    module.input_zero_point.copy_(in_zp.reshape(()))
    module.in_qmin, module.in_qmax = (int(v) for v in entry["in_qrange"])
    module.fused_relu = bool(entry["fused_relu"])
    return module


def _add_bias(model: nn.Module, name: str, state) -> None:
    """A float layer that received a folded BatchNorm gained a bias the fresh one lacks."""
    module = model.get_submodule(name)
    key = f"{name}.bias" if name else "bias"
    if getattr(module, "bias", 0) is None and key in state:
        weight = module.weight
        module.bias = nn.Parameter(torch.zeros(state[key].shape, dtype=weight.dtype, device=weight.device))


def _replay_int8(model: nn.Module, step: dict, state) -> None:
    """Rebuild the int8 layers from the file's integers and scales (read here, loaded again
    with the rest), and the Identity modules."""
    names = {n for n, _ in model.named_modules()}
    for entry in step["modules"]:
        name = entry["name"]
        module = structure.module_at(model, name, KIND)
        if entry["kind"] == "Identity":
            if type(module) is not nn.Identity:
                swap(model, name, nn.Identity())
            continue
        swap(model, name, _int8_layer(entry, state))
    rebuilt = {e["name"] for e in step["modules"]}
    for key in list(state):
        module_name, _, leaf = key.rpartition(".")
        if leaf == "bias" and module_name in names and module_name not in rebuilt:
            _add_bias(model, module_name, state)


def _replay_fold_bn(model: nn.Module, step: dict, state) -> None:
    """Each recorded BatchNorm becomes what folding left (``Identity``, or a norm + activation
    module's activation); its producer gets the bias it gained."""
    from penjing.quantization.fold_bn import after_norm

    for entry in step["modules"]:
        bn = structure.module_at(model, entry["bn"], "fold_bn")
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm | nn.Identity):
            raise structure.mismatch(entry["bn"], "fold_bn", f"is a {type(bn).__name__}, not a BatchNorm")
        structure.module_at(model, entry["name"], "fold_bn")
        if type(bn) is not nn.Identity:
            swap(model, entry["bn"], after_norm(bn))
        _add_bias(model, entry["name"], state)


def _record_act_quant(model: nn.Module) -> list[dict]:
    """The input fake-quantizers of float layers (a fake-quantized model, or the layers a
    conversion left float): an ``act_quant`` step."""
    from penjing.quantization.fake_quant import ActFakeQuant, DynamicRowQuant

    out = []
    for name, m in model.named_modules():
        q = m._modules.get("input_quant")
        if isinstance(q, ActFakeQuant):
            spec = q.spec
            out.append({"name": name, "quantizer": "static", "bits": spec.bits, "symmetric": spec.symmetric,
                        "signed": spec.signed, "reduce_range": spec.reduce_range,
                        "observer": q.observer.method, "momentum": q.observer.momentum,
                        "percentile": q.observer.percentile, "lsq": bool(q.lsq),
                        "observe": bool(q.observe), "enabled": bool(q.enabled)})
        elif isinstance(q, DynamicRowQuant):
            out.append({"name": name, "quantizer": "dynamic", "smooth": q.smooth is not None})
        if isinstance(m._modules.get(RANGES), GraphRanges):
            out.append({"name": name, "quantizer": "graph_ranges"})
    return [{"kind": "act_quant", "modules": out}] if out else []


def _replay_act_quant(model: nn.Module, step: dict, state) -> None:
    from penjing.quantization.core import QuantSpec
    from penjing.quantization.fake_quant import ActFakeQuant, attach_input_quant, mark_dynamic

    for entry in step["modules"]:
        name = entry["name"]
        module = structure.module_at(model, name, "act_quant")
        if entry["quantizer"] == "graph_ranges":  # the calibrated ranges of the whole graph
            ranges = GraphRanges()
            for buffer in ("names", "bounds"):
                key = f"{name}.{RANGES}.{buffer}"
                if key not in state:
                    raise structure.mismatch(name, "act_quant", f"needs {key!r}, which the file does not hold")
                setattr(ranges, buffer, torch.zeros(state[key].shape, dtype=state[key].dtype))
            module.add_module(RANGES, ranges)
            continue
        if "input_quant" in module._modules:
            continue  # already quantized (its state is loaded next)
        if entry["quantizer"] == "dynamic":
            key = f"{name}.input_quant.smooth"
            smooth = torch.zeros(state[key].shape) if entry["smooth"] and key in state else None
            mark_dynamic(module, smooth)
            continue
        spec = QuantSpec(bits=entry["bits"], symmetric=entry["symmetric"], signed=entry["signed"],
                         reduce_range=entry["reduce_range"])
        q = ActFakeQuant(spec, observer=entry["observer"], percentile=entry["percentile"], lsq=entry["lsq"])
        q.observer.momentum = entry["momentum"]
        q.observe, q.enabled = entry["observe"], entry["enabled"]
        attach_input_quant(module, q)


structure.register_rewrite(KIND, _replay_int8, _record)
structure.register_rewrite("act_quant", _replay_act_quant, _record_act_quant)
structure.register_rewrite("fold_bn", _replay_fold_bn)


def save_quantized(model: nn.Module, path: str | Path):
    """Write the int8 ``model`` and its structure record to ``path`` (``.pjz``; the same as
    ``pj.save``, refusing a model that is not converted); returns the codec's ``FileInfo``."""
    from penjing.codec import save

    for name, m in model.named_modules():
        if "parametrizations" in m._modules:
            raise ValueError(f"save_quantized: layer {name} is still fake-quantized; convert the model "
                             "(pj.convert) first, or save the fake-quantized model with pj.save")
    return save(model, path)


def load_quantized(path: str | Path, model: nn.Module) -> nn.Module:
    """Rebuild the int8 model saved at ``path`` on ``model`` (a fresh float instance of the
    same architecture), in place; returns it in eval mode, ready to run (``pj.load(path,
    model, runtime="dense")``, refusing a file without int8 layers)."""
    from penjing.codec import inspect, load
    from penjing.quantization.graph_saving import KEY as GRAPH_KEY

    info = inspect(path)
    steps = info.structure or []
    if not any(step["kind"] == KIND for step in steps) and GRAPH_KEY not in {t.name for t in info.tensors}:
        raise ValueError(f"load_quantized: {path} holds no quantized-model structure (saved from a "
                         "model that was not converted); load it with pj.load(path, model)")
    return load(path, model, runtime="dense").eval()
