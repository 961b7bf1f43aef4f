"""Pruning: remove unimportant weights (Han et al. 2015), at the granularity hardware can use.

    import penjing as pj
    from penjing.pruning import PruneConfig, sensitivity_scan

    pj.prune(model, PruneConfig(sparsity=0.92, schedule="iterative", rounds=4, finetune_epochs=3),
             data=train)                                      # masks W = M * V, retrained
    pj.prune(convnet, sparsity=0.5, granularity="channel", data=train)  # physically smaller
    pj.prune(model, granularity="2:4")                        # N:M
    pj.prune(model, sparsity={"last": 0.7, "*": 0.9})         # per layer: first match wins
    result = sensitivity_scan(model, val)                     # per-layer curves, suggestions
    print(pj.last_report(model))                              # what was pruned, what skipped

``pj.prune`` is the verb; the rest (``PolynomialPruning``, ``resize_like``...) is imported
from ``penjing.pruning``. The mask itself is :class:`penjing.core.mask.Mask`.
"""

from penjing.core.mask import Mask, get_mask
from penjing.pruning.api import RoundInfo, prune
from penjing.pruning.config import PruneConfig
from penjing.pruning.schedule import PolynomialPruning, polynomial_sparsity, round_sparsity
from penjing.pruning.sensitivity import SensitivityResult, sensitivity_scan
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
    "sensitivity_scan",
]
