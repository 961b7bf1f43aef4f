"""``pj.load(path, model, runtime=...)``: a model whose compressed layers run from the file.

``runtime="kernel"`` puts a runtime layer wherever a kernel applies; ``"auto"`` then times
each one against its dense twin at the caller's batch size (interleaved, median) and keeps the
faster; ``"dense"`` decodes the file to plain tensors (the codec's behaviour before the runtime).
The compressed layers are built from the stored positions, values and codebook indices
(:func:`penjing.codec.load_stored`); only ``auto``'s timing builds a dense copy of a layer,
one layer at a time, and keeps it only where dense wins.

A file with a structure record (:mod:`penjing.core.structure`) first has its structural
rewrites replayed on the given (freshly built) model, in the order they were applied; then the
weights are loaded strictly, whatever the runtime.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from penjing.codec.dtypes import from_bits, to_bits
from penjing.codec.file import MAX_ELEMENTS, _read, load_stored
from penjing.codec.tensors import StoredSparse
from penjing.core.report import Report, ms_text, record
from penjing.runtime.convert import (
    dense_call,
    dense_twin,
    input_for,
    input_shapes,
    is_hf_conv1d,
    is_int8_layer,
    kernel_layer,
    takes_kernel,
    time_pair,
)
from penjing.runtime.modules import RuntimeLayer, SparseConv2d
from penjing.runtime.ops import compiled_isa

RUNTIMES = ("auto", "kernel", "dense")


@dataclass
class LayerChoice:
    """One layer of a loaded model: its format and (``auto``) what ran faster at load."""

    name: str
    format: str
    chosen: str  # "kernel" or "dense"
    weight_bytes: int
    dense_bytes: int
    kernel_s: float | None = None
    dense_s: float | None = None


@dataclass
class LoadInfo:
    """What :func:`load_into` did: file size, resident memory it added, per-layer choices."""

    path: Path
    file_bytes: int
    runtime: str
    isa: str
    rss_before: int | None
    rss_after: int | None
    model_bytes: int
    layers: list[LayerChoice] = field(default_factory=list)
    #: layer by layer: each on a kernel, and each weighted layer left dense with the reason
    #: (also ``pj.last_report(model)``)
    report: Report | None = None

    @property
    def rss_delta(self) -> int | None:
        if self.rss_before is None or self.rss_after is None:
            return None
        return self.rss_after - self.rss_before


def rss_bytes() -> int | None:
    """Resident set size of this process (Linux ``/proc/self/statm``), else ``None``."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _trim_heap() -> None:
    """Hand the decoder's freed scratch back to the OS (glibc keeps freed heap pages resident,
    which would count a load's transients as the model's memory); a no-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def densify(s: StoredSparse) -> torch.Tensor:
    """A stored sparse tensor as a dense one (for the layers no kernel takes)."""
    vals = s.nonzero_values()
    bits = to_bits(vals)
    out = np.zeros(math.prod(s.shape), dtype=bits.dtype)
    out[s.positions] = bits
    return from_bits(out, vals.dtype, s.shape)


def model_tensor_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer the model holds (each storage counted once)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.device.type == "meta":
            continue
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _load_rest(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict(keep_vars=True)
    for key, value in state.items():
        mine = own.get(key)
        if mine is not None and tuple(mine.shape) != tuple(value.shape):
            raise ValueError(f"{path} does not fit the model: {key} is {list(value.shape)} in the file, "
                             f"{list(mine.shape)} in the model (module {key.rpartition('.')[0] or '(root)'!r})")
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        what = ([f"missing {', '.join(result.missing_keys[:3])}"] if result.missing_keys else []) + (
            [f"unexpected {', '.join(result.unexpected_keys[:3])}"] if result.unexpected_keys else [])
        raise ValueError(f"{path} does not fit the model: {'; '.join(what)}")


class _DenseView(dict):
    """The stored tensors as a structure replay reads them: a stored sparse tensor densified."""

    def __getitem__(self, key):
        value = super().__getitem__(key)
        return densify(value) if isinstance(value, StoredSparse) else value

    def get(self, key, default=None):
        return self[key] if key in self else default


def _replay(model: nn.Module, steps: list[dict] | None, state: dict, path: Path) -> None:
    if steps:
        from penjing.core.structure import replay

        replay(model, steps, _DenseView(state), where=str(path))


def _whole_format(state: dict):
    from penjing.core.structure import whole_format

    return whole_format(state)


def _load_whole(model: nn.Module, state: dict, path: Path, runtime: str, rss0, return_info: bool):
    """A file in a whole-model format (an int8 graph): its method rebuilds the model, which runs
    its own kernels (torch.ao's), whatever ``runtime`` asked for."""
    model = _whole_format(state).load(state, model, str(path))
    if not return_info:
        return model
    return model, LoadInfo(path, path.stat().st_size, runtime, compiled_isa(), rss0, rss_bytes(),
                           model_tensor_bytes(model))


def _input_sizes(model: nn.Module, layers: dict[str, RuntimeLayer], example) -> dict[str, tuple[int, int]]:
    convs = {name: layer for name, layer in layers.items() if isinstance(layer, SparseConv2d)}
    return {name: shape[-2:] for name, shape in input_shapes(model, example, convs).items()}


def load_into(model: nn.Module, path: str | Path, *, runtime: str = "auto", batch: int = 1,
              example: torch.Tensor | None = None, rounds: int = 7, max_elements: int = MAX_ELEMENTS,
              return_info: bool = False):
    """Load the ``.pjz`` at ``path`` into ``model`` (its architecture; it may live on the
    ``meta`` device) and return it, or ``(model, LoadInfo)`` with ``return_info``.

    ``model`` is a freshly built instance of the class that was compressed: the file's
    structure record, if any, is replayed on it first (a step that does not fit raises a
    ``ValueError`` naming the module), then every tensor is loaded strictly.

    ``runtime``: ``"auto"`` (time kernel vs dense per layer at ``batch`` and keep the faster;
    conv layers need ``example``, an input of the model, to know their sizes), ``"kernel"``
    (every layer a kernel applies to runs it), ``"dense"`` (plain dense weights)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    path = Path(path)
    gc.collect()
    rss0 = rss_bytes()
    choices: list[LayerChoice] = []
    report = Report("load")
    if runtime == "dense":
        state, file_info = _read(path, max_elements)
        if _whole_format(state) is not None:
            return _load_whole(model, state, path, runtime, rss0, return_info)
        _replay(model, file_info.structure, state, path)
        _load_rest(model, state, path)
        del state
    else:
        stored, file_info = load_stored(path, max_elements=max_elements)
        if _whole_format(stored) is not None:
            dense = {k: densify(v) if isinstance(v, StoredSparse) else v for k, v in stored.items()}
            return _load_whole(model, dense, path, runtime, rss0, return_info)
        _replay(model, file_info.structure, stored, path)
        layers: dict[str, RuntimeLayer] = {}
        #: layers whose own module is the alternative ``auto`` times (an int8 layer runs its int8
        #: kernel; a Conv1D keeps its ``[in, out]`` weight): name -> (module, stored weight)
        itself: dict[str, tuple[nn.Module, torch.Tensor | StoredSparse]] = {}
        kinds: dict[str, str] = {}
        for name, module in list(model.named_modules()):
            key = f"{name}.weight" if name else "weight"
            is_int8 = is_int8_layer(module)
            if key not in stored or len(stored[key].shape) < 2:
                continue
            if not takes_kernel(module):
                report.skip(name, module, kernel_layer(module))
                continue
            weight = stored[key]
            shape = tuple(weight.shape)
            own = tuple((module.weight_int8 if is_int8 else module.weight).shape)
            if shape != own:
                raise ValueError(f"{path} does not fit the model: {key} is {list(shape)} in the file, "
                                 f"{list(own)} in the model")
            bias_key = f"{name}.bias" if name else "bias"
            bias = stored.get(bias_key)
            if isinstance(bias, StoredSparse):
                bias = densify(bias)
            if (bias is None) != (module.bias is None):
                raise ValueError(f"{path} does not fit the model: {name or 'the model'} bias differs")
            prefix = f"{name}." if name else ""
            own_keys = [k for k in stored if k.startswith(prefix) and "." not in k[len(prefix):]] if is_int8 else []
            if is_int8:  # its scales and input grid first: the runtime layer copies them
                module.load_state_dict({k[len(prefix):]: densify(stored[k]) if isinstance(stored[k], StoredSparse)
                                        else stored[k] for k in own_keys if k != key}, strict=False)
            layer = kernel_layer(module, weight, bias)
            if isinstance(layer, str):
                report.skip(name, module, layer)
                continue
            layers[name] = layer
            kinds[name] = type(module).__name__
            if is_hf_conv1d(module):  # (its bias is taken out of the state below)
                module.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
            if is_int8 or is_hf_conv1d(module):
                itself[name] = (module, weight)
            for k in own_keys:
                stored.pop(k)
            stored.pop(key, None)
            stored.pop(bias_key, None)
        rest = {k: densify(v) if isinstance(v, StoredSparse) else v for k, v in stored.items()}
        del stored
        for name, layer in layers.items():
            _set_module(model, name, layer)
        _load_rest(model, rest, path)
        del rest
        sizes = _input_sizes(model, layers, example) if runtime == "auto" and example is not None else {}
        for name, layer in layers.items():
            int8 = name in itself and is_int8_layer(itself[name][0])
            dense_bytes = (1 if int8 else 4) * _dense_numel(layer)
            choice = LayerChoice(name, layer.format, "kernel", layer.weight_bytes, dense_bytes)
            if runtime == "auto":
                if isinstance(layer, SparseConv2d) and name not in sizes:
                    raise ValueError(f"runtime='auto' times conv layer {name} on its input size: pass "
                                     "example=<an input of the model>, or use runtime='kernel'")
                x = input_for(layer, batch, sizes.get(name))
                if name in itself:
                    module, stored_weight = itself[name]
                    # (a Conv1D of a meta-device skeleton takes the tensors themselves: assign)
                    module.load_state_dict({"weight": densify(stored_weight) if isinstance(stored_weight, StoredSparse)
                                            else stored_weight}, strict=False, assign=not int8)
                    dense, make_dense = module, (lambda m=module: m)
                else:
                    dense = dense_call(layer, layer.dense_weight())
                    make_dense = lambda layer=layer: dense_twin(layer)  # noqa: E731
                choice.kernel_s, choice.dense_s = time_pair(layer, dense, x, rounds)
                if choice.dense_s < choice.kernel_s:
                    choice.chosen = "dense"
                    _set_module(model, name, make_dense())
                del dense, make_dense
            choices.append(choice)
            other = "int8 layer" if int8 else "dense"
            timed = (f"kernel {ms_text(choice.kernel_s)} ms, {other} {ms_text(choice.dense_s)} ms at batch {batch}"
                     if choice.kernel_s is not None else "")
            if choice.chosen == "kernel":
                report.touch(name, kinds[name], "stored weight", layer.format, timed)
            else:
                report.skip(name, kinds[name], f"auto kept the {other}, faster: {timed}")
        itself.clear()
    gc.collect()
    _trim_heap()
    if runtime == "dense":
        report.note("runtime='dense': every layer holds plain dense weights")
    record(model, report)
    info = LoadInfo(path, path.stat().st_size, runtime, compiled_isa(), rss0, rss_bytes(),
                    model_tensor_bytes(model), choices, report)
    return (model, info) if return_info else model


def _dense_numel(layer: RuntimeLayer) -> int:
    if isinstance(layer, SparseConv2d):
        return layer.out_channels * layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
    return layer.in_features * layer.out_features
