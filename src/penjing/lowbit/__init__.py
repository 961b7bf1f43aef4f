"""Binary and ternary networks: BinaryConnect, XNOR scaling, TWN, TTQ.

::

    import penjing as pj
    pj.ternarize(model, pj.TernaryConfig(algorithm="ttq", threshold=0.05))
    pj.fit(model, train, epochs=10)          # trains latent weights and Wp/Wn
    pj.binarize(model2, pj.BinaryConfig(algorithm="xnor"))
    pj.save(model, "model.pjz")              # 3-value codebook / 1-bit affine per weight

Every algorithm is a parametrization (``W = Wp*[V > d] - Wn*[V < -d]``, ``W = alpha*sign(V)``)
attached with :func:`penjing.core.params.attach`; first and last layers stay full precision
unless ``keep_first_last=False``. Storage goes through the one ``.pjz`` codec (the layers'
codec hints); :func:`penjing.lowbit.report.storage` reports its sizes.
"""

from penjing.lowbit import structure as _structure  # noqa: F401  (registers the record's kinds)
from penjing.lowbit.api import binarize, latent, lowbit_layers, ternarize, ternary_sparsity
from penjing.lowbit.binary import BinaryInput, BinaryWeight
from penjing.lowbit.calibrate import recalibrate_batchnorm
from penjing.lowbit.config import BinaryConfig, TernaryConfig
from penjing.lowbit.mulfree import TernaryLinear, to_multiplication_free
from penjing.lowbit.ternary import TTQWeight, TWNWeight

__all__ = [
    "BinaryConfig",
    "BinaryInput",
    "BinaryWeight",
    "TTQWeight",
    "TWNWeight",
    "TernaryConfig",
    "TernaryLinear",
    "binarize",
    "latent",
    "lowbit_layers",
    "recalibrate_batchnorm",
    "ternarize",
    "ternary_sparsity",
    "to_multiplication_free",
]
