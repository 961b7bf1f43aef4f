"""Layer extraction: run a model once on an example input and record what it computes.

Any ``nn.Module`` works, whatever its ``forward`` does (no symbolic tracing): a
:class:`torch.overrides.TorchFunctionMode` sees every ``torch``/``F`` call of the forward pass,
and forward hooks on every module name them. Each call becomes a :class:`Layer`:

* **GEMM layers** (``F.linear``, ``F.conv1d/2d/3d`` with any stride/padding/dilation/groups,
  ``matmul``/``@``/``bmm``/``mm``/``addmm``/``baddbmm`` and ``scaled_dot_product_attention``)
  in their GEMM view ``out[M x N] = A[M x K] @ B[K x N]``, repeated ``count`` times (conv
  groups, batched matmuls): a conv's im2col view has ``M = batch * output pixels``,
  ``K = in_channels/groups * kernel volume`` and ``N = out_channels/groups``.
* **memory-only layers**: pooling, normalisation, activations and other element-wise ops;
  they read their inputs and write their output but use no multiplier array.

Each GEMM layer knows the sparsity of its weight (zeros of the tensor the forward really used,
so pruning masks count), the stored bits per weight (``penjing.core.stats.weight_bits``: a
parametrization's ``.bits`` or an integer dtype), the activation bits (a layer's
``input_quant`` child with ``.bits``, integer kernels, or the input dtype) and whether the
arithmetic is integer (both operands quantized) or floating point.

The model runs in eval mode under ``no_grad`` and its training flags are restored afterwards:
tracing never changes BatchNorm statistics or weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

from penjing.core.params import parametrizations
from penjing.core.stats import INDEX_BITS, weight_bits

#: Calls that move no data (views, metadata) or create tensors from nothing: not layers.
_FREE = {
    "dim", "size", "numel", "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten",
    "permute", "transpose", "t", "squeeze", "unsqueeze", "expand", "expand_as", "__getitem__",
    "detach", "to", "type", "float", "half", "double", "contiguous", "chunk", "split", "unbind",
    "narrow", "select", "__get__", "__len__", "__iter__", "is_floating_point", "is_contiguous",
    "stride", "data_ptr", "element_size", "requires_grad_", "__setitem__", "movedim",
    "get_device", "__format__", "__repr__", "__bool__", "item", "tolist", "__index__",
    "_has_compatible_shallow_copy_type", "cpu", "cuda", "clone", "__hash__", "__eq__",
}
_POOL = ("pool",)
#: Compute ops the model does not cost yet: refusing them beats silently under-counting.
_UNSUPPORTED = ("conv_transpose", "einsum", "tensordot", "bilinear", "lstm", "gru", "rnn_",
                "conv_tbc", "fft")
_GEMM_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class Layer:
    """One traced operation. For ``kind == "gemm"``: ``count`` GEMMs of ``M x K`` by ``K x N``."""

    name: str
    op: str
    kind: str  # "gemm" or "memory"
    in_elems: int
    out_elems: int
    M: int = 0
    K: int = 0
    N: int = 0
    count: int = 1
    #: elements of the B operand (weights; or the second activation of a matmul)
    w_elems: int = 0
    w_nonzeros: int = 0
    #: True when B is a stored weight (False for activation x activation matmuls)
    has_weight: bool = False
    weight_bits: float = 32.0
    act_bits: float = 32.0
    integer: bool = False
    index_bits: int = 0
    #: element-wise operations of a memory-only layer (compares of a pool, adds, ...)
    ops: int = 0
    #: fraction of nonzero input activations (ReLU zeros): reported, not yet exploited
    act_density: float = 1.0

    @property
    def macs(self) -> int:
        return self.count * self.M * self.K * self.N

    @property
    def density(self) -> float:
        """Fraction of nonzero B elements (1.0 for a dense or activation operand)."""
        return self.w_nonzeros / self.w_elems if self.w_elems else 1.0

    @property
    def nonzero_macs(self) -> float:
        return self.macs * self.density

    @property
    def compute_bits(self) -> float:
        """Operand width of the multiplier: integer ops at the wider operand, else float at
        the activation width (a 5-bit codebook index still multiplies a float centroid)."""
        return max(self.weight_bits, self.act_bits) if self.integer else self.act_bits

    def weight_bytes(self) -> float:
        """Stored bytes of B: dense at its bits, or sparse values + relative indices (Deep
        Compression's format, as in :func:`penjing.core.stats.estimate_bytes`), whichever is
        smaller. Activation operands are dense at the activation width."""
        if not self.has_weight:
            return self.w_elems * self.act_bits / 8
        dense = self.w_elems * self.weight_bits / 8
        sparse = self.w_nonzeros * (self.weight_bits + self.index_bits) / 8
        return min(dense, sparse)


def _bits_of(t: torch.Tensor) -> float:
    if t.is_floating_point():
        return float(torch.finfo(t.dtype).bits)
    if t.dtype == torch.bool:
        return 1.0
    return float(torch.iinfo(t.dtype).bits)


def _input_quant_bits(module: nn.Module | None) -> float | None:
    q = getattr(module, "input_quant", None) if module is not None else None
    if q is not None and getattr(q, "enabled", True) and getattr(q, "bits", None):
        return float(q.bits)
    return None


def _is_affine_quant(module: nn.Module) -> bool:
    # integer arithmetic needs an integer grid: a scale and zero-point (not a codebook)
    return any(hasattr(p, "scale") and hasattr(p, "zero_point") for p in parametrizations(module))


def _tensors(args) -> list[torch.Tensor]:
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(x for x in a if isinstance(x, torch.Tensor))
    return out


class _Recorder(TorchFunctionMode):
    def __init__(self, stack: list[tuple[str, nn.Module]]):
        super().__init__()
        self.stack = stack
        self.layers: list[Layer] = []
        self.seen_gemm: set[int] = set()  # ids of modules whose GEMM was seen as a call
        self._counter: dict[str, int] = {}
        #: > 0 while a parametrization computes a weight: representation, not inference work
        self.hidden = 0
        #: ids of integer-kernel modules (int weight buffers), costed from their weight shape
        self._int_modules: set[int] = set()

    # naming --------------------------------------------------------------------------
    def _name(self, op: str) -> str:
        base = self.stack[-1][0] if self.stack else "(root)"
        key = f"{base}|{op}"
        n = self._counter.get(key, 0)
        self._counter[key] = n + 1
        return base if n == 0 and self.stack and self._owns(op) else f"{base}:{op}{n or ''}".lstrip(":")

    def _owns(self, op: str) -> bool:
        module = self.stack[-1][1]
        return (op in ("linear", "conv1d", "conv2d", "conv3d") and isinstance(module, _GEMM_TYPES)) or \
            not any(True for _ in module.children())

    # recording -----------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        if name in _FREE or not isinstance(out, torch.Tensor) or self.hidden:
            return out
        if self.stack and id(self.stack[-1][1]) in self._int_modules:
            return out  # internals of an integer kernel layer: costed from its weight shape
        lname = name.lower()
        if any(u in lname for u in _UNSUPPORTED):
            where = self.stack[-1][0] if self.stack else "the model"
            raise ValueError(f"cannot trace {name} in {where or 'the model'}: the hardware model "
                             "does not cost this operation yet")
        inputs = _tensors(args) + _tensors(kwargs.values())
        if not inputs:
            return out  # a factory call (zeros, randn): no input traffic
        if lname in ("linear",):
            self._linear(inputs[0], args[1] if len(args) > 1 else kwargs["weight"], out)
        elif lname in ("conv1d", "conv2d", "conv3d"):
            self._conv(lname, inputs[0], args[1] if len(args) > 1 else kwargs["weight"], out,
                       args[6] if len(args) > 6 else kwargs.get("groups", 1))
        elif lname in ("matmul", "__matmul__", "__rmatmul__", "bmm", "mm", "addmm", "baddbmm", "mv"):
            a, b = (inputs[-2], inputs[-1]) if lname in ("addmm", "baddbmm") else (inputs[0], inputs[1])
            if lname == "__rmatmul__":
                a, b = b, a
            self._matmul(lname.strip("_"), a, b, out)
        elif lname == "scaled_dot_product_attention":
            q, k, v = inputs[:3]
            self._gemm_shapes("sdpa_qk", q, q.shape[-2], q.shape[-1], k.shape[-2],
                              q.numel() + k.numel(), q.shape[:-2])
            self._gemm_shapes("sdpa_av", q, q.shape[-2], k.shape[-2], v.shape[-1],
                              v.numel(), q.shape[:-2], out_elems=out.numel())
        else:
            reads = sum(t.numel() for t in inputs)
            window = 1
            if any(p in lname for p in _POOL):
                window = max(1, round(inputs[0].numel() / max(out.numel(), 1)))
            self.layers.append(Layer(
                name=self._name(lname), op=lname.strip("_"), kind="memory", in_elems=reads,
                out_elems=out.numel(), ops=out.numel() * window, act_bits=_bits_of(inputs[0]),
                integer=not inputs[0].is_floating_point()))
        return out

    def _module_weight_info(self, weight: torch.Tensor) -> tuple[float, bool, int, float | None]:
        """(stored bits, affine-quantized?, index bits, activation bits) of the running layer."""
        module = self.stack[-1][1] if self.stack else None
        if module is not None and isinstance(getattr(module, "weight", None), torch.Tensor):
            self.seen_gemm.add(id(module))
            bits = weight_bits(module)
            kind = "Linear" if weight.dim() == 2 else "conv"
            return bits, _is_affine_quant(module) or not weight.is_floating_point(), \
                INDEX_BITS[kind], _input_quant_bits(module)
        return _bits_of(weight), not weight.is_floating_point(), \
            INDEX_BITS["Linear" if weight.dim() == 2 else "conv"], None

    def _add_weighted(self, op: str, x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor,
                      M: int, K: int, N: int, count: int) -> None:
        bits, affine, index_bits, act_q = self._module_weight_info(weight)
        act_bits = act_q if act_q is not None else _bits_of(x)
        with torch.no_grad():
            nonzeros = int(torch.count_nonzero(weight))
            act_density = float(torch.count_nonzero(x)) / max(x.numel(), 1)
        self.layers.append(Layer(
            name=self._name(op), op=op, kind="gemm", in_elems=x.numel(), out_elems=out.numel(),
            M=M, K=K, N=N, count=count, w_elems=weight.numel(), w_nonzeros=nonzeros,
            has_weight=True, weight_bits=bits, act_bits=act_bits,
            integer=affine and (act_q is not None or not x.is_floating_point()),
            index_bits=index_bits, act_density=act_density))

    def _linear(self, x, weight, out):
        K = weight.shape[-1]
        self._add_weighted("linear", x, weight, out, x.numel() // K, K, weight.shape[0], 1)

    def _conv(self, op, x, weight, out, groups):
        groups = int(groups)
        out_ch = weight.shape[0]
        M = out.numel() // out_ch  # batch * output positions, whatever stride/padding did
        K = math.prod(weight.shape[1:])  # in_channels/groups * kernel volume
        self._add_weighted(op, x, weight, out, M, K, out_ch // groups, groups)

    def _matmul(self, op, a, b, out):
        a2 = a if a.dim() > 1 else a.unsqueeze(0)
        b2 = b if b.dim() > 1 else b.unsqueeze(-1)
        batch = out.shape[:-2] if out.dim() > 2 else ()
        self._gemm_shapes(op, a, a2.shape[-2], a2.shape[-1], b2.shape[-1], b.numel(), batch,
                          out_elems=out.numel(), b=b)

    def _gemm_shapes(self, op, a, M, K, N, b_elems, batch, out_elems=None, b=None):
        count = math.prod(batch) if len(batch) else 1
        nonzeros = b_elems if b is None else int(torch.count_nonzero(b))
        act_q = _input_quant_bits(self.stack[-1][1] if self.stack else None)
        self.layers.append(Layer(
            name=self._name(op), op=op, kind="gemm", in_elems=a.numel(),
            out_elems=out_elems if out_elems is not None else count * M * N, M=int(M), K=int(K),
            N=int(N), count=int(count), w_elems=int(b_elems), w_nonzeros=nonzeros,
            has_weight=False, weight_bits=_bits_of(a), act_bits=act_q or _bits_of(a),
            integer=not a.is_floating_point()))


def _int_kernel_layer(name: str, module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> Layer:
    """An integer-kernel layer (int8 weight buffer, custom op): cost it from its weight shape."""
    w = module.weight
    nonzeros = int(torch.count_nonzero(w))
    if w.dim() == 2:
        K = w.shape[1]
        M, N, count, index = x.numel() // K, w.shape[0], 1, INDEX_BITS["Linear"]
    else:
        groups = int(getattr(module, "groups", 1))
        M, K, N, count = out.numel() // w.shape[0], math.prod(w.shape[1:]), w.shape[0] // groups, groups
        index = INDEX_BITS["conv"]
    return Layer(name=name, op="int_gemm", kind="gemm", in_elems=x.numel(), out_elems=out.numel(),
                 M=M, K=K, N=N, count=count, w_elems=w.numel(), w_nonzeros=nonzeros,
                 has_weight=True, weight_bits=_bits_of(w), act_bits=8.0, integer=True, index_bits=index)


def trace(model: nn.Module, example: torch.Tensor | tuple) -> list[Layer]:
    """Run ``model`` once on ``example`` (a tensor or a tuple of positional inputs) and return
    its layers in execution order. Raises ``ValueError`` with the reason when the model cannot
    be run or uses an operation the cost model does not know."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected an nn.Module to trace, got {type(model).__name__}")
    inputs = example if isinstance(example, tuple) else (example,)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise ValueError("the example input must be a tensor or a tuple of tensors")
    stack: list[tuple[str, nn.Module]] = []
    recorder = _Recorder(stack)
    int_modules = {id(m) for _, m in model.named_modules()
                   if isinstance(getattr(m, "weight", None), torch.Tensor)
                   and not m.weight.is_floating_point() and m.weight.dim() in (2, 3, 4, 5)}
    recorder._int_modules = int_modules
    handles = []

    def pre(name):
        hidden = isinstance(module_of[name], parametrize.ParametrizationList)

        def hook(module, args):
            if hidden:
                recorder.hidden += 1
            stack.append((name, module))
        return hook

    def post(name):
        hidden = isinstance(module_of[name], parametrize.ParametrizationList)

        def hook(module, args, output):
            if hidden:
                recorder.hidden -= 1
            stack.pop()
            if id(module) in int_modules and id(module) not in recorder.seen_gemm:
                xs = _tensors(args)
                if xs and isinstance(output, torch.Tensor):
                    recorder.hidden += 1  # our own zero count is not a layer of the model
                    try:
                        recorder.layers.append(_int_kernel_layer(name, module, xs[0], output))
                    finally:
                        recorder.hidden -= 1
        return hook

    module_of = dict(model.named_modules())
    module_of = {name or "(root)": m for name, m in module_of.items()}
    for name, module in module_of.items():
        handles.append(module.register_forward_pre_hook(pre(name)))
        handles.append(module.register_forward_hook(post(name)))
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), recorder:
            model(*inputs)
    except ValueError as exc:
        if str(exc).startswith("cannot trace"):
            raise
        raise ValueError(f"cannot trace {type(model).__name__}: its forward failed on the example "
                         f"input of shape {tuple(inputs[0].shape)}: {exc}") from exc
    except Exception as exc:  # any failure of the user's forward becomes one clear message
        raise ValueError(f"cannot trace {type(model).__name__}: its forward failed on the example "
                         f"input of shape {tuple(inputs[0].shape)}: {type(exc).__name__}: {exc}") from exc
    finally:
        for h in handles:
            h.remove()
        for m, flag in modes.items():
            m.train(flag)
    if not any(layer.kind == "gemm" for layer in recorder.layers):
        raise ValueError(f"cannot trace {type(model).__name__}: no linear, convolution or matmul "
                         "was executed, so there is nothing for the hardware model to cost")
    return recorder.layers
