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
    a kernel takes; returns the names replaced. ``pj.last_report(model)`` lists them and every
    weighted layer left as it was, with the reason; a ``select`` name that is no weighted layer
    of the model is an error."""
    from penjing.core.layers import is_weighted
    from penjing.core.report import Report, record
    from penjing.runtime.convert import is_int8_layer, kernel_layer
    from penjing.runtime.load import _set_module

    modules = dict(model.named_modules())

    def candidate(m) -> bool:
        return is_weighted(m) or is_int8_layer(m)

    if select is not None:
        unknown = sorted(n for n in select if n not in modules or not candidate(modules[n]))
        if unknown:
            raise ValueError(f"runtime.convert: select names no weighted layer of the model: {unknown[:5]}")
    report = Report("runtime.convert")
    replaced = []
    for name, module in modules.items():
        if not name or (select is not None and name not in select):
            continue
        if not candidate(module) or isinstance(module, RuntimeLayer):
            continue
        layer = kernel_layer(module)
        if isinstance(layer, str):
            report.skip(name, module, layer)
            continue
        _set_module(model, name, layer)
        replaced.append(name)
        report.touch(name, module, "weight", layer.format)
    record(model, report)
    return replaced
