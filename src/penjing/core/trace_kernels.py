"""The recorder behind :func:`penjing.core.trace.trace`: which ATen kernels are what, where a
weight comes from, and the two modes that turn a forward pass into :class:`Layer` records
(see the module docstring of :mod:`penjing.core.trace` for the model)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from penjing.core.params import parametrizations
from penjing.core.stats import INDEX_BITS, stored_weight
from penjing.core.trace_layer import Layer

aten = torch.ops.aten


def _ops(*names: str) -> frozenset:
    """The ATen operators of these names that this torch build has."""
    return frozenset(getattr(aten, n) for n in names if hasattr(aten, n))


#: Kernels that move no data the cost model charges for: views are caught by ``is_view``;
#: these are metadata, aliasing, layout copies, dtype casts and in-place initialisation.
_FREE = _ops(
    "detach", "alias", "lift_fresh", "lift_fresh_copy", "clone", "_to_copy", "copy_", "contiguous",
    "_unsafe_view", "split", "split_with_sizes", "unsafe_split", "unbind", "chunk", "empty_like",
    "zeros_like", "ones_like", "full_like", "rand_like", "randn_like", "new_empty", "new_zeros",
    "new_ones", "new_full", "new_empty_strided", "empty_strided", "_local_scalar_dense", "sym_size",
    "sym_stride", "sym_numel", "sym_storage_offset", "is_same_size",
    "_has_compatible_shallow_copy_type", "set_", "resize_", "zero_", "fill_", "is_nonzero", "equal")
#: Pure data movement: traffic, but no arithmetic (``ops = 0``).
_MOVE = _ops(
    "cat", "stack", "gather", "index", "index_select", "constant_pad_nd", "reflection_pad1d",
    "reflection_pad2d", "reflection_pad3d", "replication_pad1d", "replication_pad2d",
    "replication_pad3d", "repeat", "roll", "flip", "slice_scatter", "select_scatter", "index_put",
    "index_put_", "im2col", "col2im", "masked_select", "tril", "triu", "pixel_shuffle",
    "pixel_unshuffle", "channel_shuffle", "upsample_nearest1d", "upsample_nearest2d",
    "upsample_nearest3d")
_SDPA = _ops(
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable")
_EMBEDDING_BAG = _ops("embedding_bag", "_embedding_bag", "_embedding_bag_forward_only")
#: Compute kernels the cost model has no GEMM view for: refused by name.
_UNSUPPORTED_WORDS = ("fft", "rnn", "lstm", "gru", "_trilinear", "conv_tbc", "attention",
                      "transformer_encoder", "flex_", "_scaled_mm", "cdist", "linalg_", "cholesky",
                      "triangular_solve")

#: Torch functions that are one GEMM: their name is the op name of the kernel they run.
_MATMUL_FUNCTIONS = {"matmul", "mm", "bmm", "baddbmm", "addmm", "addbmm", "mv", "addmv", "dot",
                     "vdot", "inner", "outer", "einsum", "tensordot", "chain_matmul",
                     "multi_dot", "bilinear", "addr", "ger"}
#: Short labels of the functions attention is written with.
_LABELS = {"scaled_dot_product_attention": "sdpa", "multi_head_attention_forward": "attention"}


@cache
def _is_compute(packet) -> bool:
    """A kernel in torch's own FLOP registry (``torch.utils.flop_counter``) or named like one."""
    name = packet.__name__.lower()
    return packet in flop_registry or any(w in name for w in _UNSUPPORTED_WORDS) or (
        not str(packet).startswith("aten.") and any(w in name for w in ("linear", "conv", "mm", "matmul")))


def _bits_of(t: torch.Tensor) -> float:
    if t.is_floating_point() or t.is_complex():
        return float(torch.finfo(t.dtype).bits)
    if t.dtype == torch.bool:
        return 1.0
    return float(torch.iinfo(t.dtype).bits)


def tensors(args) -> list[torch.Tensor]:
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(x for x in a if isinstance(x, torch.Tensor))
    return out


def _first_tensor(out) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (list, tuple)):
        return next((t for t in out if isinstance(t, torch.Tensor)), None)
    return None


def storage_key(t: torch.Tensor) -> int | tuple | None:
    """Address of ``t``'s storage: views of one tensor share it; ``None`` when it has none."""
    if t.layout != torch.strided or t.numel() == 0:
        return None
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # meta / functional wrapper tensors
        return None
    return ptr if t.device.type == "cpu" else (str(t.device), ptr)  # one address space each


@cache
def _normalise(name: str) -> str:
    name = name.strip("_").lower()
    return _LABELS.get(name, name)


# --- where a weight comes from --------------------------------------------------------------

@dataclass
class Origin:
    """A stored tensor of the model: its owner module and what the hardware models need."""

    module_name: str  # "" for the root
    module: nn.Module
    tensor_name: str
    stored: torch.Tensor
    _info: tuple | None = field(default=None, repr=False)

    @property
    def record_name(self) -> str:
        base = self.module_name or "(root)"
        return base if self.tensor_name == "weight" else (
            f"{self.module_name}.{self.tensor_name}" if self.module_name else self.tensor_name)

    def info(self) -> tuple[float, bool, int, float | None]:
        """(stored bits, on an affine integer grid?, relative-index bits, activation bits)."""
        if self._info is None:
            plist = parametrizations(self.module, self.tensor_name)
            declared = [p.bits for p in plist if getattr(p, "bits", None)]
            bits = float(min(declared)) if declared else _bits_of(self.stored)
            # integer arithmetic needs an integer grid: a scale and zero-point (not a codebook)
            affine = any(hasattr(p, "scale") and hasattr(p, "zero_point") for p in plist) \
                or not self.stored.is_floating_point()
            index = INDEX_BITS["Linear" if self.stored.dim() <= 2 else "conv"]
            q = getattr(self.module, "input_quant", None)
            act_q = float(q.bits) if q is not None and getattr(q, "enabled", True) and \
                getattr(q, "bits", None) else None
            self._info = (bits, affine, index, act_q)
        return self._info


def _stored_tensors(model: nn.Module) -> tuple[dict, dict]:
    """Every parameter and buffer of ``model`` by storage (a parametrization's ``original``
    belongs to the module it parametrizes), and every owner of a storage that several modules
    share (tied weights: an LM head reusing the embedding table)."""
    registry: dict = {}
    owners: dict = {}

    def register(key, origin: Origin) -> None:
        registry.setdefault(key, origin)
        owners.setdefault(key, []).append(origin)

    for mname, module in model.named_modules():
        if isinstance(module, parametrize.ParametrizationList):
            continue  # its tensors are registered under the parametrized module below
        for tname, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            key = storage_key(tensor)
            if key is not None:
                register(key, Origin(mname, module, tname, tensor))
        plists = getattr(module, "parametrizations", None)
        if isinstance(plists, nn.ModuleDict):
            for tname, plist in plists.items():
                for pname, tensor in [*plist.named_parameters(), *plist.named_buffers()]:
                    key = storage_key(tensor)
                    if key is not None:
                        stored = tensor if pname.startswith("original") else plist.original
                        register(key, Origin(mname, module, tname, stored))
    shared = {k: v for k, v in owners.items() if len({id(o.module) for o in v}) > 1}
    return registry, shared


# --- the recorder -----------------------------------------------------------------------------

@dataclass
class Frame:
    name: str
    module: nn.Module
    int_kernel: bool = False


@dataclass
class Naming:
    style: str  # "weight", "function" or "memory"
    base: str
    label: str = ""
    owns: bool = False
    group: int = -1  # records of one call (the two GEMMs of an attention) share a name


class State:
    def __init__(self, model: nn.Module):
        self.stack: list[Frame] = []
        self.layers: list[Layer] = []
        self.naming: list[Naming] = []
        self.weights, self.shared = _stored_tensors(model)
        #: weights computed during the forward (parametrization outputs, casts): kept alive so
        #: that no activation can reuse their storage address while the trace runs
        self.derived: list[torch.Tensor] = []
        self.hidden = 0  # > 0 while a parametrization computes a weight: not inference work
        self.function = ""  # the torch function running now (the outermost one)
        self.groups = 0

    def origin(self, t: torch.Tensor) -> Origin | None:
        key = storage_key(t)
        if key is None:
            return None
        if key in self.shared:  # a tied weight belongs to the innermost running module owning it
            for frame in reversed(self.stack):
                owner = next((o for o in self.shared[key] if o.module is frame.module), None)
                if owner is not None:
                    return owner
        return self.weights.get(key)

    def add_derived(self, out, origin: Origin) -> None:
        for t in tensors(out if isinstance(out, (list, tuple)) else (out,)):
            key = storage_key(t)
            if key is not None and key not in self.weights:
                self.weights[key] = origin
                self.derived.append(t)

    @property
    def where(self) -> str:
        return self.stack[-1].name if self.stack else "(root)"

    @property
    def leaf(self) -> bool:
        return bool(self.stack) and not any(True for _ in self.stack[-1].module.children())

    def add(self, layer: Layer, naming: Naming) -> None:
        self.layers.append(layer)
        self.naming.append(naming)


class FunctionNames(TorchFunctionMode):
    """Notes the torch function each kernel runs under; a function that ran exactly one
    memory-only kernel lends it its name (``avg_pool1d`` rather than ``avg_pool2d``)."""

    def __init__(self, state: State):
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        state = self.state
        start = len(state.layers)
        state.function = getattr(func, "__name__", "")
        try:
            return func(*args, **(kwargs or {}))
        finally:
            state.function = ""
            new = [lay for lay in state.layers[start:] if lay.kind == "memory"]
            if len(new) == 1 and len(state.layers) - start == 1 and new[0].op != "embedding":
                name = _normalise(getattr(func, "__name__", new[0].op))
                if name and not name.startswith("get"):
                    new[0].op = name


class Kernels(TorchDispatchMode):
    """Records every kernel of the forward pass."""

    def __init__(self, state: State):
        super().__init__()
        self.state = state

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        state = self.state
        if state.hidden or (state.stack and state.stack[-1].int_kernel):
            return out  # a weight being computed, or an integer kernel costed from its shape
        if func.is_view:
            return out  # a view shares its input's storage: it moves nothing, stays what it was
        packet = func.overloadpacket
        inputs = tensors(args) + tensors(kwargs.values())
        if not inputs:
            return out  # a factory (zeros, arange): no input traffic
        first = state.origin(inputs[0])  # most kernels read an activation first: one look-up
        if first is not None and all(state.origin(t) is not None for t in inputs[1:]):
            state.add_derived(out, first)  # computed from stored tensors alone (a cast): a weight
        if packet in _FREE:
            return out  # metadata, layout copies, dtype casts move nothing we charge
        with torch._C.DisableTorchFunction():  # our own zero counts are not the model's calls
            self._record(packet, args, kwargs, inputs, out)
        return out

    # -- dispatch on the kernel -------------------------------------------------------------
    def _record(self, packet, args, kwargs, inputs, out) -> None:
        if packet in (aten.mm, aten._int_mm):
            self._gemm(packet, args[0], args[1], out)
        elif packet in (aten.addmm, aten._addmm_activation):
            self._gemm(packet, args[1], args[2], out)
        elif packet in (aten.bmm, aten.baddbmm, aten.addbmm):
            a, b = (args[0], args[1]) if packet is aten.bmm else (args[1], args[2])
            self._gemm(packet, a, b, out)
        elif packet in (aten.mv, aten.addmv):
            a, v = (args[0], args[1]) if packet is aten.mv else (args[1], args[2])
            self._gemm(packet, a, v.unsqueeze(-1), out)
        elif packet in (aten.dot, aten.vdot):
            self._gemm(packet, args[0].unsqueeze(0), args[1].unsqueeze(-1), out)
        elif packet is aten.addr:
            self._gemm(packet, args[1].unsqueeze(-1), args[2].unsqueeze(0), out)
        elif packet is aten.linear:
            x, w = args[0], args[1]
            self._gemm(packet, x.reshape(-1, w.shape[-1]), w.t(), out)
        elif packet in (aten.convolution, aten._convolution, aten.convolution_overrideable):
            self._conv(args, out)
        elif packet in _SDPA:
            self._sdpa(args[0], args[1], args[2], _first_tensor(out))
        elif packet is aten.embedding:
            self._embedding(args[0], args[1], out, reduce=False)
        elif packet in _EMBEDDING_BAG:
            self._embedding(args[0], args[1], _first_tensor(out), reduce=True)
        elif _is_compute(packet):
            fn = f"{_normalise(self.state.function)} " if self.state.function else ""
            raise ValueError(f"cannot trace {fn}({packet}) in {self.state.where}: the hardware model "
                             "does not cost this operation yet")
        else:
            self._memory(packet, inputs, _first_tensor(out))

    # -- GEMMs ------------------------------------------------------------------------------
    def _gemm(self, packet, a: torch.Tensor, b: torch.Tensor, out) -> None:
        """``a[..., M, K] @ b[..., K, N]``; the weight, if either is one, becomes B."""
        state = self.state
        out = _first_tensor(out)
        M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
        count = math.prod(a.shape[:-2])
        origin_b, origin_a = state.origin(b), state.origin(a)
        if origin_b is None and origin_a is not None:  # W @ x: out^T = x^T @ W^T
            a, b, M, N, origin_b = b, a, N, M, origin_a
        if b.dim() > 2 and not any(b.stride()[:-2]):  # one B broadcast over the batch: one GEMM
            M, count, b = M * count, 1, b[(0,) * (b.dim() - 2)]
        fn = _normalise(state.function)
        default = "linear" if origin_b is not None and packet in (aten.mm, aten.addmm, aten.linear,
                                                                  aten._addmm_activation) else \
            ("bmm" if packet in (aten.bmm, aten.baddbmm, aten.addbmm) else "matmul")
        op = fn if fn in _MATMUL_FUNCTIONS or fn == "linear" else default
        if origin_b is not None:
            self._weighted(op, a, b, out, M, K, N, count, origin_b)
            return
        label = fn if fn in _MATMUL_FUNCTIONS or fn in _LABELS.values() else op
        state.groups += 1
        state.add(Layer(name="", op=op, kind="gemm", in_elems=a.numel(), out_elems=out.numel(),
                        M=int(M), K=int(K), N=int(N), count=int(count), w_elems=b.numel(),
                        w_nonzeros=int(torch.count_nonzero(b)), has_weight=False,
                        weight_bits=_bits_of(b), act_bits=_bits_of(a),
                        integer=not a.is_floating_point(), module=self._module()),
                  Naming("function", state.where, label, group=state.groups))

    def _weighted(self, op, x, w, out, M, K, N, count, origin: Origin) -> None:
        bits, affine, index_bits, act_q = origin.info()
        act_bits = act_q if act_q is not None else _bits_of(x)
        self.state.add(Layer(
            name="", op=op, kind="gemm", in_elems=x.numel(), out_elems=out.numel(), M=int(M),
            K=int(K), N=int(N), count=int(count), w_elems=w.numel(),
            w_nonzeros=int(torch.count_nonzero(w)), has_weight=True, weight_bits=bits,
            act_bits=act_bits, integer=affine and (act_q is not None or not x.is_floating_point()),
            index_bits=index_bits, act_density=float(torch.count_nonzero(x)) / max(x.numel(), 1),
            module=origin.module_name), Naming("weight", origin.record_name))

    def _conv(self, args, out) -> None:
        x, w, transposed = args[0], args[1], bool(args[6])
        groups = int(args[8])
        dims = w.dim() - 2
        if transposed:  # weight (in, out/groups, *k): every input pixel meets the whole kernel
            M = x.numel() // x.shape[1]
            K, N = w.shape[0] // groups, math.prod(w.shape[1:])
            op = f"conv_transpose{dims}d"
        else:  # weight (out, in/groups, *k)
            M, K, N = out.numel() // w.shape[0], math.prod(w.shape[1:]), w.shape[0] // groups
            op = f"conv{dims}d"
        origin = self.state.origin(w)
        if origin is not None:
            self._weighted(op, x, w, out, M, K, N, groups, origin)
            return
        state = self.state  # a kernel computed by the forward (a dynamic filter)
        state.groups += 1
        state.add(Layer(name="", op=op, kind="gemm", in_elems=x.numel(), out_elems=out.numel(),
                        M=M, K=K, N=N, count=groups, w_elems=w.numel(),
                        w_nonzeros=int(torch.count_nonzero(w)), act_bits=_bits_of(x),
                        weight_bits=_bits_of(w), integer=not x.is_floating_point(),
                        module=self._module()),
                  Naming("function", state.where, op, group=state.groups))

    def _sdpa(self, q, k, v, out) -> None:
        """Fused attention as its two GEMMs, dense (a causal kernel may skip masked blocks;
        the count does not); its softmax runs inside the kernel and is not a layer."""
        state = self.state
        count, L, E, S = math.prod(q.shape[:-2]), q.shape[-2], q.shape[-1], k.shape[-2]
        scores = count * L * S
        bits, integer, module = _bits_of(q), not q.is_floating_point(), self._module()
        state.groups += 1
        naming = Naming("function", state.where, "sdpa", group=state.groups)
        state.add(Layer(name="", op="sdpa_qk", kind="gemm", in_elems=q.numel(), out_elems=scores,
                        M=L, K=E, N=S, count=count, w_elems=k.numel(), w_nonzeros=k.numel(),
                        weight_bits=bits, act_bits=bits, integer=integer, module=module), naming)
        state.add(Layer(name="", op="sdpa_av", kind="gemm", in_elems=scores, out_elems=out.numel(),
                        M=L, K=S, N=v.shape[-1], count=count, w_elems=v.numel(),
                        w_nonzeros=v.numel(), weight_bits=bits, act_bits=bits, integer=integer,
                        module=module), naming)

    # -- memory-only ------------------------------------------------------------------------
    def _embedding(self, table: torch.Tensor, ids: torch.Tensor, out: torch.Tensor, reduce: bool) -> None:
        """A lookup reads the gathered rows (weight bytes) and the ids; a bag also adds them."""
        state = self.state
        origin = state.origin(table)
        rows = ids.numel() * table.shape[-1]  # values read from the table
        if origin is not None:
            bits, _, index_bits, _ = origin.info()
            name, module = origin.record_name, origin.module_name
        else:
            bits, index_bits, name, module = _bits_of(table), INDEX_BITS["Linear"], state.where, self._module()
        value_bits = _bits_of(out)
        nonzeros = int(torch.count_nonzero(out)) if not reduce else rows
        state.add(Layer(
            name="", op="embedding_bag" if reduce else "embedding", kind="memory",
            # ids counted in words of the value width, so that in_elems * act_bits is their bytes
            in_elems=math.ceil(ids.numel() * _bits_of(ids) / value_bits), out_elems=out.numel(),
            w_elems=rows, w_nonzeros=min(nonzeros, rows), has_weight=origin is not None,
            weight_bits=bits, act_bits=value_bits, index_bits=index_bits,
            ops=rows if reduce else 0, module=module),
            Naming("weight" if origin is not None else "memory", name, owns=True))

    def _memory(self, packet, inputs: list[torch.Tensor], out: torch.Tensor | None) -> None:
        if out is None:
            return
        state = self.state
        data = [t for t in inputs if t.dtype != torch.bool] or inputs
        floating = [t for t in data if t.is_floating_point()]
        window = 1
        if "pool" in packet.__name__:
            window = max(1, round(inputs[0].numel() / max(out.numel(), 1)))
        op = _normalise(packet.__name__)
        state.add(Layer(
            name="", op=op, kind="memory", in_elems=sum(t.numel() for t in inputs),
            out_elems=out.numel(), ops=0 if packet in _MOVE else out.numel() * window,
            act_bits=max(_bits_of(t) for t in (floating or data)), integer=not floating,
            module=self._module()), Naming("memory", state.where, owns=state.leaf))

    def _module(self) -> str:
        name = self.state.stack[-1].name if self.state.stack else ""
        return "" if name == "(root)" else name


def int_kernel_layer(name: str, module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> Layer:
    """An integer-kernel layer (int8 weight buffer, torch.ao packed weight, custom op): cost it
    from its weight shape."""
    w = stored_weight(module)
    nonzeros = int(torch.count_nonzero(w))
    if w.dim() == 2:
        K = w.shape[1]
        M, N, count, index = x.numel() // K, w.shape[0], 1, INDEX_BITS["Linear"]
    else:  # the groups from the channels (a module may keep them only inside its packed weight)
        groups = x.shape[1] // w.shape[1] if x.dim() == w.dim() else int(getattr(module, "groups", 1))
        M, K, N, count = out.numel() // w.shape[0], math.prod(w.shape[1:]), w.shape[0] // groups, groups
        index = INDEX_BITS["conv"]
    return Layer(name=name, op="int_gemm", kind="gemm", in_elems=x.numel(), out_elems=out.numel(),
                 M=M, K=K, N=N, count=count, w_elems=w.numel(), w_nonzeros=nonzeros,
                 has_weight=True, weight_bits=_bits_of(w), act_bits=8.0, integer=True,
                 index_bits=index, module=name if name != "(root)" else "")


def assign_names(state: State) -> None:
    """Final names: a weight's owner (``fc1``; ``fc1:linear1`` when it runs again), functional
    compute after its module (``attn (sdpa)``, ``attn (sdpa 2)``), memory ops as ``bn1`` in a
    leaf module or ``block:add1`` inside a container."""
    seen: dict[tuple, int] = {}
    group_names: dict[int, str] = {}
    for layer, naming in zip(state.layers, state.naming, strict=True):
        if naming.group >= 0 and naming.group in group_names:
            layer.name = group_names[naming.group]
            continue
        # a weight's second use is a second layer whatever its op; others count per op
        key = (naming.style, naming.base, "" if naming.style == "weight" else naming.label or layer.op)
        n = seen.get(key, 0)
        seen[key] = n + 1
        if naming.style == "function":
            layer.name = f"{naming.base} ({naming.label}{f' {n + 1}' if n else ''})"
        elif naming.style == "weight" or (naming.owns and n == 0):
            layer.name = naming.base if n == 0 else f"{naming.base}:{layer.op}{n}"
        else:
            layer.name = f"{naming.base}:{layer.op}{n or ''}"
        if naming.group >= 0:
            group_names[naming.group] = layer.name
