"""Weight sharing (Deep Compression, Han et al. 2016): k-means codebooks per layer.

::

    import penjing as pj
    pj.share(model, pj.ShareConfig(bits={"conv": 8, "*": 5}, init="linear"))
    pj.fit(model, train, epochs=3)   # fine-tunes the centroids
    pj.save(model, "model.pjz")      # codebook + b-bit indices (+ sparse index, Huffman)

Each selected layer's weight becomes the parametrization ``W = C[I]``
(:class:`SharedWeight`): zeros stay zero (a pruning mask below keeps them so), the nonzero
weights are clustered by exact 1-D k-means (:func:`kmeans_1d`).
"""

from penjing.sharing.api import share, share_layer
from penjing.sharing.config import DEFAULT_BITS, ShareConfig, default_bits
from penjing.sharing.kmeans import init_centroids, kmeans_1d
from penjing.sharing.shared import SharedWeight

__all__ = ["DEFAULT_BITS", "ShareConfig", "SharedWeight", "default_bits", "init_centroids",
           "kmeans_1d", "share", "share_layer"]
