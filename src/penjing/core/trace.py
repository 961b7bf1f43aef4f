"""The one tracer: run a model once on an example input and record what it computes.

Any ``nn.Module`` works, whatever its ``forward`` does (no symbolic tracing). Counting happens
at the **dispatch level**: a :class:`~torch.utils._python_dispatch.TorchDispatchMode` sees
every ATen kernel the forward pass runs, after composite functions (``F.linear``, ``@``,
``einsum``, ``tensordot``, ``nn.MultiheadAttention``, the math path of
``scaled_dot_product_attention``) have decomposed into the kernels that really execute. So
compute written as a function call, a method or an operator is counted wherever it is
written, not only inside ``nn.Linear`` / ``nn.Conv*`` modules. Each kernel becomes a
:class:`Layer`:

* **GEMM layers** (``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``mv``, ``dot``, ``linear``,
  ``convolution`` with any stride/padding/dilation/groups, transposed too, and the fused
  ``scaled_dot_product_attention`` kernels as two GEMMs: ``Q K^T`` and ``P V``) in their GEMM
  view ``out[M x N] = A[M x K] @ B[K x N]``, repeated ``count`` times (conv groups, batched
  matmuls). A conv's im2col view has ``M = batch * output pixels``,
  ``K = in_channels/groups * kernel volume``, ``N = out_channels/groups``; a transposed conv
  scatters every *input* pixel through the kernel: ``M = batch * input pixels``,
  ``K = in_channels/groups``, ``N = out_channels/groups * kernel volume``.
* **memory-only layers**: pooling, normalisation, activations, element-wise ops, embedding
  lookups (a gather of table rows: weight bytes read, no arithmetic).

Three things name the records and tell the hardware models what the operands are:

* forward pre/post hooks on every module keep the stack of running modules: a record belongs
  to the innermost one. Functional compute is named after it, ``"blocks.0.attn (sdpa)"``,
  ``"blocks.0.attn (matmul 2)"``.
* a :class:`~torch.overrides.TorchFunctionMode` notes the torch function each kernel came
  from (op names such as ``matmul``, ``einsum``, ``softmax``, ``avg_pool1d``). Being active,
  it also makes ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` take their
  composite path (same math) instead of the fused ``_native_multi_head_attention`` kernel,
  whose matmuls no dispatch mode could see.
* the model's parameters and buffers, keyed by storage: an operand that is (a view of) a
  stored tensor, the output of a parametrization (a pruned, shared, quantized or ternary
  weight) or computed from stored tensors alone (a dtype cast) is a **weight**. Its owner
  module names the record (``"fc1"``; ``"attn.in_proj_weight"`` for a weight not called
  ``weight``) and gives its stored bits (``.bits`` of its parametrizations, else the
  dtype), whether it is on an integer grid, and the activation bits (an ``input_quant``
  child with ``.bits``). Its sparsity is the zero count of the tensor the kernel really
  used, so pruning masks count.

Layout copies (``clone``, ``contiguous``, dtype casts), views and tensor factories are free,
as before: the hardware models stream data in the layout they need. Integer inputs (token
ids, masks) are ordinary operands. A kernel with compute that the cost model does not know
(FFTs, fused RNN cells, fused attention variants below
``scaled_dot_product_attention``) is refused with its name rather than silently left out.
Layers whose weight is stored as integers and run by their own kernels (a converted int8
layer) are costed from their weight shape (``op == "int_gemm"``).

The model runs in eval mode under ``no_grad`` and its training flags are restored
afterwards: tracing never changes BatchNorm statistics or weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from penjing.core.stats import stored_weight
from penjing.core.trace_kernels import (
    Frame,
    FunctionNames,
    Kernels,
    Naming,
    Origin,
    State,
    assign_names,
    int_kernel_layer,
    storage_key,
    tensors,
)
from penjing.core.trace_layer import Layer, layer_macs

__all__ = ["Layer", "layer_macs", "trace"]


def _call(model: nn.Module, example):
    if isinstance(example, Mapping):
        return model(**example)
    return model(*(example if isinstance(example, tuple) else (example,)))


def _describe(example) -> str:
    if isinstance(example, Mapping):
        return "{" + ", ".join(f"{k}: {tuple(v.shape)}" for k, v in example.items()) + "}"
    first = example[0] if isinstance(example, tuple) else example
    return f"of shape {tuple(first.shape)}"


def trace(model: nn.Module, example: torch.Tensor | tuple | Mapping) -> list[Layer]:
    """Run ``model`` once on ``example`` and return its layers in execution order.

    ``example``: a tensor, a tuple of positional inputs, or a mapping of keyword inputs (an
    HF ``input_ids`` / ``attention_mask`` dict); integer tensors (token ids) are fine. Raises
    ``ValueError`` with the reason when the model cannot be run or uses a compute operation
    the cost model does not know."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"expected an nn.Module to trace, got {type(model).__name__}")
    values = list(example.values()) if isinstance(example, Mapping) else \
        list(example) if isinstance(example, tuple) else [example]
    if not values or not all(isinstance(t, torch.Tensor) for t in values):
        raise ValueError("the example input must be a tensor, a tuple of tensors or a dict of tensors")
    state = State(model)
    modules = {name or "(root)": m for name, m in model.named_modules()}
    # int8 layers keep their integers in weight_int8 (their weight attribute is a float view),
    # torch.ao's quantized modules (pj.convert's int8 graph) inside a packed weight
    stored = {id(m): stored_weight(m) for m in modules.values()}
    int_modules = {i for i, w in stored.items()
                   if isinstance(w, torch.Tensor) and not w.is_floating_point() and w.dim() in (2, 3, 4, 5)}
    handles = []

    def pre(name: str, module: nn.Module):
        hidden = isinstance(module, parametrize.ParametrizationList)
        maybe_int = id(module) in int_modules

        def hook(module, args, kwargs):
            if hidden:
                state.hidden += 1
            xs = tensors(args) + tensors(kwargs.values())
            # an integer-weight layer fed floats or int8 activations (quantized / uint8 tensors of
            # an int8 graph) runs its own kernel; fed ids it is a lookup
            state.stack.append(Frame(name, module, maybe_int and bool(xs) and _activation(xs[0])))
        return hook

    def post(name: str, module: nn.Module):
        hidden = isinstance(module, parametrize.ParametrizationList)
        owner, _, tname = name.rpartition(".parametrizations.")

        def hook(module, args, kwargs, output):
            frame = state.stack.pop()
            if hidden:
                state.hidden -= 1
                owner_module = modules.get(owner or "(root)")
                stored = getattr(module, "original", None)
                if isinstance(output, torch.Tensor) and owner_module is not None and not state.hidden \
                        and isinstance(stored, torch.Tensor):
                    origin = state.weights.get(storage_key(stored)) or \
                        Origin(owner, owner_module, tname, stored)
                    state.add_derived(output, origin)  # the pruned / shared / quantized weight
            if frame.int_kernel and isinstance(output, torch.Tensor):
                xs = tensors(args)
                state.hidden += 1  # our own zero count is not a layer of the model
                try:
                    state.add(int_kernel_layer(name, module, xs[0], output), Naming("weight", name))
                finally:
                    state.hidden -= 1
        return hook

    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(pre(name, module), prepend=True, with_kwargs=True))
        handles.append(module.register_forward_hook(post(name, module), with_kwargs=True, always_call=True))
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), FunctionNames(state), Kernels(state):
            _call(model, example)
    except ValueError as exc:
        if str(exc).startswith("cannot trace"):
            raise
        raise ValueError(f"cannot trace {type(model).__name__}: its forward failed on the example "
                         f"input {_describe(example)}: {exc}") from exc
    except Exception as exc:  # any failure of the user's forward becomes one clear message
        raise ValueError(f"cannot trace {type(model).__name__}: its forward failed on the example "
                         f"input {_describe(example)}: {type(exc).__name__}: {exc}") from exc
    finally:
        for h in handles:
            h.remove()
        for m, flag in modes.items():  # each module's own flag back (train() would recurse)
            m.training = flag
    if not any(layer.kind == "gemm" for layer in state.layers):
        raise ValueError(f"cannot trace {type(model).__name__}: no linear, convolution or matmul "
                         "was executed, so there is nothing for the hardware model to cost")
    assign_names(state)
    return state.layers


def _activation(x: torch.Tensor) -> bool:
    """An activation tensor (not token ids): float, quantized, or uint8 (int8 graphs' codes)."""
    return x.is_floating_point() or x.is_quantized or x.dtype == torch.uint8
