"""Binary and ternary networks: BinaryConnect, XNOR scaling, TWN, TTQ, and packed storage.

::

    import penjing as pj
    pj.ternarize(model, pj.TernaryConfig(method="ttq", threshold=0.05))
    pj.fit(model, train, epochs=10)          # trains latent weights and Wp/Wn
    pj.binarize(model2, pj.BinaryConfig(method="xnor"))

Every method is a parametrization (``W = Wp*[V > d] - Wn*[V < -d]``, ``W = alpha*sign(V)``)
attached with :func:`penjing.core.params.attach`; first and last layers stay full precision
unless ``keep_first_last=False``.
"""

from penjing.lowbit.api import binarize, latent, lowbit_layers, ternarize, ternary_sparsity
from penjing.lowbit.binary import BinaryInput, BinaryWeight
from penjing.lowbit.calibrate import recalibrate_batchnorm
from penjing.lowbit.config import BinaryConfig, TernaryConfig
from penjing.lowbit.mulfree import TernaryLinear, to_multiplication_free
from penjing.lowbit.pack import (
    decode_ternary_entropy,
    encode_ternary_entropy,
    entropy_bits_per_weight,
    pack_bits,
    pack_ternary,
    unpack_bits,
    unpack_ternary,
)
from penjing.lowbit.storage import pack, packed_bytes, unpack
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
    "decode_ternary_entropy",
    "encode_ternary_entropy",
    "entropy_bits_per_weight",
    "latent",
    "lowbit_layers",
    "pack",
    "pack_bits",
    "pack_ternary",
    "packed_bytes",
    "recalibrate_batchnorm",
    "ternarize",
    "ternary_sparsity",
    "to_multiplication_free",
    "unpack",
    "unpack_bits",
    "unpack_ternary",
]
