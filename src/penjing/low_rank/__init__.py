"""Low-rank approximation: Linear by truncated SVD, one convolution split into two (or three),
an embedding table as a narrower table times a Linear.

    import penjing as pj

    pj.lowrank(model, pj.LowRankConfig(params=0.5), data=train)
    plan = pj.last_report(model).extra["plan"]  # per layer: rank, params and MACs, error
    print(plan.table())
    pj.fit(model, train, epochs=5)               # fine-tune the factors
"""

from penjing.low_rank import structure as _structure  # noqa: F401  (registers the record's kind)
from penjing.low_rank.api import LayerResult, LowRankResult, factorise, lowrank
from penjing.low_rank.budget import budget_states
from penjing.low_rank.config import LowRankConfig
from penjing.low_rank.curve import accuracy_curve
from penjing.low_rank.modules import (
    CONV_METHODS,
    FACTORISED_TYPES,
    ChannelSplitConv2d,
    CPConv2d,
    LowRankEmbedding,
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
    "LowRankEmbedding",
    "LowRankLinear",
    "LowRankResult",
    "SpatialSplitConv2d",
    "Tucker2Conv2d",
    "accuracy_curve",
    "budget_states",
    "build_candidate",
    "factorise",
    "lowrank",
    "measure_sensitivity",
]
