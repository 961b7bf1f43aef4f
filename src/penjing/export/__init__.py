"""Take a compressed model elsewhere: ONNX export, checked by ONNX Runtime.

```python
import penjing as pj
result = pj.export(model, "model.onnx", example_inputs)   # dense / factorised float or QDQ int8
print(result.describe())        # which exporter ran, max relative error vs PyTorch
```

Modules: :mod:`.prepare` (what each compressed representation becomes), :mod:`.qdq` (int8
layers as QuantizeLinear/DequantizeLinear), :mod:`.graph` (int8 weight initializers),
:mod:`.onnx_export` (the exporters, fallback, error naming the layer), :mod:`.check`
(ONNX Runtime session and comparison). Needs the optional extra ``penjing[export]``.
"""

import sys
import types

from penjing.export.onnx_export import EXPORTERS, ExportResult, export, failing_layer
from penjing.export.prepare import export_ready

__all__ = ["EXPORTERS", "ExportResult", "export", "export_ready", "failing_layer"]


class _CallableModule(types.ModuleType):
    """``pj.export(model, path, example_inputs)`` calls :func:`export`, while
    ``penjing.export.qdq`` and friends stay importable (the verb does not shadow the package)."""

    def __call__(self, *args, **kwargs) -> ExportResult:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
