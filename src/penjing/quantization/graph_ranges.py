"""Calibrated ranges of every tensor in the model's ``torch.fx`` graph, for the int8 flow.

For int8 activations to flow from layer to layer (:mod:`.int8_graph`), each op that writes
an int8 tensor needs that tensor's range: a conv's output scale, a residual sum's, a pooled
tensor's. During calibration the model is traced once (quantized layers as leaves) and an
observer is put after every node of a *copy* of its graph; the copy shares the user's
modules, so the user's ``forward`` is never changed. The ranges, keyed by node name, are
kept in a :class:`GraphRanges` module that lives beside the quantizers of the first quantized
layer (the model's root may be an ``nn.Sequential``, which runs every child it has).
A model that ``torch.fx`` cannot trace is calibrated as it is (its layers then convert one
by one, float between them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

from penjing.quantization.fake_quant import ActFakeQuant, DynamicRowQuant, WeightFakeQuant

ATTR = "graph_ranges"


class _Leaves(fx.Tracer):
    """Quantized layers and penjing's quantizers are leaves; the rest as torch.fx does."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, ActFakeQuant | DynamicRowQuant | WeightFakeQuant | GraphRanges):
            return True
        from penjing.quantization.int_kernels import _Int8Base

        if isinstance(m, _Int8Base):
            return True
        return super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule | None:
    """``model``'s fx graph (traced in eval mode, the mode it will run int8 in) as a GraphModule
    sharing its modules, or None if it cannot be traced."""
    from penjing.quantization.ptq import eval_mode

    try:
        with eval_mode(model):
            graph = _Leaves().trace(model)
    except Exception:  # noqa: BLE001 -- data-dependent control flow, unsupported ops: no graph
        return None
    return fx.GraphModule(model, graph, class_name=type(model).__name__)


class _Observe(nn.Module):
    """Pass-through that records the min / max of the float tensors it sees."""

    def __init__(self):
        super().__init__()
        self.lo = float("inf")
        self.hi = float("-inf")

    def forward(self, x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel():
            with torch.no_grad():
                self.lo = min(self.lo, float(x.min()))
                self.hi = max(self.hi, float(x.max()))
        return x


class GraphRanges(nn.Module):
    """``{node name: (lo, hi)}`` of a model's graph, kept in two state_dict buffers (the names
    as NUL-separated UTF-8 bytes, the bounds as float64) so it saves with the model."""

    def __init__(self, ranges: dict[str, tuple[float, float]] | None = None):
        super().__init__()
        ranges = dict(ranges or {})
        names = "\0".join(ranges).encode()
        self.register_buffer("names", torch.tensor(list(names), dtype=torch.uint8))
        self.register_buffer("bounds", torch.tensor([ranges[n] for n in ranges], dtype=torch.float64).reshape(-1, 2))

    @property
    def ranges(self) -> dict[str, tuple[float, float]]:
        text = bytes(self.names.tolist()).decode()
        names = text.split("\0") if text else []
        if len(names) != self.bounds.shape[0]:
            raise ValueError(f"graph ranges: {len(names)} names but {self.bounds.shape[0]} ranges")
        return {n: (float(lo), float(hi)) for n, (lo, hi) in zip(names, self.bounds.tolist(), strict=True)}

    def forward(self, x):  # never called: it only holds state
        return x

    def extra_repr(self) -> str:
        return f"{self.bounds.shape[0]} tensors"


def _host(model: nn.Module) -> nn.Module | None:
    """The first quantized layer (where :class:`GraphRanges` lives)."""
    for m in model.modules():
        if isinstance(getattr(m, "input_quant", None), ActFakeQuant):
            return m
    return None


def graph_ranges(model: nn.Module) -> GraphRanges | None:
    host = _host(model)
    ranges = getattr(host, ATTR, None) if host is not None else None
    return ranges if isinstance(ranges, GraphRanges) else None


def drop_graph_ranges(model: nn.Module) -> None:
    host = _host(model)
    if host is not None and ATTR in host._modules:
        del host._modules[ATTR]


def observe_graph(model: nn.Module, calib: list, config, run, calibrate: Callable) -> None:
    """Calibrate ``model``'s input quantizers and, when fx can trace it (and the ranges stay
    fixed: PTQ), record the range of every tensor of its graph."""
    gm = trace(model) if config.mode == "ptq" else None
    if gm is None:
        calibrate(model, calib, config, run)
        run.report.note("int8 layers will exchange float tensors: " + (
            "QAT ranges keep moving until frozen" if config.mode == "qat"
            else "torch.fx cannot trace this model"))
        return
    observers: dict[str, _Observe] = {}
    for node in list(gm.graph.nodes):
        if node.op == "output":
            continue
        name = f"_pj_observe_{len(observers)}"
        obs = _Observe()
        gm.add_submodule(name, obs)
        with gm.graph.inserting_after(node):
            tap = gm.graph.call_module(name, (node,))
        node.replace_all_uses_with(tap, delete_user_cb=lambda user, tap=tap: user is not tap)
        observers[node.name] = obs
    gm.recompile()
    calibrate(model, calib, config, run, target=gm)
    ranges = {n: (o.lo, o.hi) for n, o in observers.items() if o.lo <= o.hi}
    host = _host(model)
    if host is not None:
        host.add_module(ATTR, GraphRanges(ranges))
