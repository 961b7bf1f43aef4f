"""What the low-rank tests share: run ``pj.lowrank`` and read back the plan it recorded."""

from __future__ import annotations

from penjing.core.report import last_report
from penjing.low_rank import lowrank


def decompose(model, config, **kwargs):
    """``pj.lowrank`` and the per-layer plan it records."""
    lowrank(model, config, **kwargs)
    return last_report(model).extra["plan"]
