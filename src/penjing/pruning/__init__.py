"""Pruning: remove unimportant weights (Han et al. 2015), at the granularity hardware can use.

    import penjing as pj
    from penjing.pruning import PruneConfig, sensitivity

    pj.prune(model, PruneConfig(sparsity=0.92, schedule="iterative", rounds=4, finetune_epochs=3),
             train)                                           # masks W = M * V, retrained
    pj.prune(convnet, PruneConfig(sparsity=0.5, granularity="channel"), train)  # physically smaller
    pj.prune(model, PruneConfig(granularity="2:4"))           # N:M
    result = sensitivity(model, test)                         # per-layer curves, suggested sparsities

``pj.prune`` is the verb; the package is shadowed by it on ``penjing``, so import the rest
(``PolynomialPruning``, ``Mask``, ``resize_like``...) from ``penjing.pruning``.
"""

from penjing.pruning.api import RoundInfo, prune
from penjing.pruning.config import PruneConfig
from penjing.core.mask import Mask, get_mask
from penjing.pruning.schedule import PolynomialPruning, polynomial_sparsity, round_sparsity
from penjing.pruning.sensitivity import SensitivityResult, sensitivity
from penjing.pruning.structured import resize_like

__all__ = [
    "Mask",
    "PolynomialPruning",
    "PruneConfig",
    "RoundInfo",
    "SensitivityResult",
    "get_mask",
    "polynomial_sparsity",
    "prune",
    "resize_like",
    "round_sparsity",
    "sensitivity",
]
