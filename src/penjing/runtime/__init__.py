"""Compressed layers that run fast on CPU, straight from their stored form.

::

    model = pj.load("out/model.pjz", MyNet(), runtime="auto", batch=1)   # kernels where faster
    from penjing.runtime.report import format_report, speed_report
    print(format_report(speed_report(model, [1, 32])))

Kernels (C, compiled with gcc on first use into the user cache, dispatched on the CPU's
AVX2 / AVX-512 flags, threads from ``torch.get_num_threads()``; see :mod:`.build`) for sparse
Linear / Conv2d with fp32, int8 or codebook values, and ternary / binary Linear. Without a
compiler every layer runs a pure-PyTorch fallback (one warning). Details: docs/runtime.md.
"""

from penjing.runtime.build import cpu_flags, kernels, supported_variants
from penjing.runtime.convert import dense_twin, runtime_layer
from penjing.runtime.formats import BitWeights, SparseWeights
from penjing.runtime.load import LayerChoice, LoadInfo, load_into
from penjing.runtime.modules import (
    BinaryLinear,
    CodebookLinear,
    RuntimeLayer,
    SparseConv2d,
    SparseLinear,
    TernaryLinear,
)
from penjing.runtime.ops import compiled_isa
from penjing.runtime.report import FileSpeed, file_speed_report

__all__ = ["BinaryLinear", "BitWeights", "CodebookLinear", "FileSpeed", "LayerChoice", "LoadInfo", "RuntimeLayer",
           "SparseConv2d", "SparseLinear", "SparseWeights", "TernaryLinear", "compiled_isa", "convert",
           "cpu_flags", "dense_twin", "file_speed_report", "kernels", "load_into", "runtime_layer", "supported_variants"]


def convert(model, *, select=None):
    """Replace, in place, every ``nn.Linear`` / ``nn.Conv2d`` and every int8 layer of
    ``pj.convert`` (optionally only those ``select`` names, a set of module names) whose weight
    a kernel takes; returns the names replaced."""
    from torch import nn

    from penjing.runtime.convert import is_int8_layer
    from penjing.runtime.load import _set_module

    replaced = []
    for name, module in list(model.named_modules()):
        if not name or (select is not None and name not in select):
            continue
        takes = isinstance(module, (nn.Linear, nn.Conv2d)) or is_int8_layer(module)
        layer = runtime_layer(module) if takes else None
        if layer is not None:
            _set_module(model, name, layer)
            replaced.append(name)
    return replaced
