"""Quantization: PTQ and QAT with fake quantization, and real int8 execution.

```python
import penjing as pj
pj.quantize(model, pj.QuantConfig(bits=8, per_channel=True), data=train)   # PTQ, W8A8
int8_model = pj.convert(model)                      # int8 x int8 -> int32 kernels on CPU
print(pj.last_report(model))                        # what ran in int8, what stayed float and why

pj.quantize(bert, pj.QuantConfig(activations="dynamic", smooth_alpha="auto", int8=True), data=batches)

from penjing.quantization import qat_fit
qat_fit(model, pj.QuantConfig(bits=4, mode="qat", lsq=True, qat_epochs=5), train)
```

Modules: :mod:`.core` (the affine grid), :mod:`.observers`, :mod:`.fake_quant` (weight
parametrization, activation quantizer), :mod:`.fold_bn`, :mod:`.ptq`, :mod:`.qat`,
:mod:`.int_kernels` (``convert``, and why its kernels were chosen), :mod:`.sensitivity`,
:mod:`.report`.
"""

from penjing.quantization import graph_saving as _graph_saving  # noqa: F401  (registers the int8-graph file format)
from penjing.quantization.config import QuantConfig
from penjing.quantization.core import QuantSpec, dequantize, fake_quantize, qparams, sqnr_db
from penjing.quantization.fake_quant import ActFakeQuant, WeightFakeQuant
from penjing.quantization.fold_bn import fold_batchnorm
from penjing.quantization.int_kernels import Int8Conv2d, Int8Embedding, Int8Linear, convert
from penjing.quantization.ptq import calibrate, quantize, quantized_layers
from penjing.quantization.qat import FreezeQuantization, freeze, qat_fit
from penjing.quantization.report import layer_report
from penjing.quantization.saving import load_quantized, save_quantized
from penjing.quantization.sensitivity import Sensitivity, sensitivity

__all__ = [
    "ActFakeQuant",
    "FreezeQuantization",
    "Int8Conv2d",
    "Int8Embedding",
    "Int8Linear",
    "QuantConfig",
    "QuantSpec",
    "Sensitivity",
    "WeightFakeQuant",
    "calibrate",
    "convert",
    "dequantize",
    "fake_quantize",
    "fold_batchnorm",
    "freeze",
    "layer_report",
    "load_quantized",
    "qat_fit",
    "qparams",
    "quantize",
    "quantized_layers",
    "save_quantized",
    "sensitivity",
    "sqnr_db",
]
