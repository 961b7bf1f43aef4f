"""Low-rank approximation: Linear by truncated SVD, one convolution split into two (or three).

    import penjing as pj
    from penjing.low_rank import decompose_model

    result = decompose_model(model, pj.LowRankConfig(params=0.5), data=train)
    print(result.table())            # per layer: rank, params and MACs before/after, error
    pj.fit(model, train, epochs=5)   # fine-tune the factors

``pj.lowrank(model, config)`` is the one-verb form (returns the model). The package is
shadowed by that verb on ``penjing``, so import the rest from ``penjing.low_rank``.
"""

from penjing.low_rank.api import LayerResult, LowRankResult, decompose_model, factorise, lowrank
from penjing.low_rank.budget import budget_states
from penjing.low_rank.config import LowRankConfig
from penjing.low_rank.curve import accuracy_curve
from penjing.low_rank.modules import (
    CONV_METHODS,
    FACTORISED_TYPES,
    ChannelSplitConv2d,
    CPConv2d,
    LowRankLinear,
    SpatialSplitConv2d,
    Tucker2Conv2d,
)
from penjing.low_rank.plan import Candidate, build_candidate
from penjing.low_rank.sensitivity import measure as measure_sensitivity

__all__ = [
    "CONV_METHODS",
    "CPConv2d",
    "Candidate",
    "ChannelSplitConv2d",
    "FACTORISED_TYPES",
    "LayerResult",
    "LowRankConfig",
    "LowRankLinear",
    "LowRankResult",
    "SpatialSplitConv2d",
    "Tucker2Conv2d",
    "accuracy_curve",
    "budget_states",
    "build_candidate",
    "decompose_model",
    "factorise",
    "lowrank",
    "measure_sensitivity",
]
