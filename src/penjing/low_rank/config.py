"""``LowRankConfig``: which layers, which factorisation, and how the ranks are chosen."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from penjing.core.select import LayerSelector

CONV_METHOD_NAMES = ("channel", "spatial", "tucker", "cp")

Rank = int | tuple[int, int]


@dataclass
class LowRankConfig:
    """How :func:`penjing.low_rank.lowrank` factorises a model. Set exactly one rank rule:

    * ``rank``: an explicit rank for every selected layer (an int; a ``(r_in, r_out)`` pair for
      Tucker-2), or a dict ``{name glob: rank}`` for per-layer ranks (first match wins; layers
      matched by no key keep their dense form);
    * ``energy``: per layer, the smallest rank keeping this fraction of the squared singular
      values (in (0, 1]);
    * ``params``: a global budget, the fraction of the model's parameters to keep; every
      layer's rank is chosen together, greedily over singular values across layers, for the
      least total (relative, squared) approximation error;
    * ``flops``: the same with the fraction of the model's multiply-accumulates to keep
      (needs an example input or data).

    With none set, ``params=0.5``. ``method`` picks the conv factorisation (``channel``,
    ``spatial``, ``tucker`` or ``cp``), or a dict ``{name glob: method}`` to choose per layer
    (unmatched convs use ``channel``); Linear layers always use truncated SVD. ``sensitivity``
    weights each layer's error in the budget by its measured loss sensitivity on data.
    ``refine`` refines Tucker-2 by HOOI (needs tensorly); ``cp`` needs tensorly too.
    """

    rank: Rank | dict[str, Rank] | None = None
    energy: float | None = None
    params: float | None = None
    flops: float | None = None
    method: str | dict[str, str] = "channel"
    layers: LayerSelector = None
    exclude: LayerSelector = ()
    sensitivity: bool = False
    sensitivity_samples: int = 512
    refine: bool = False
    _rule: str = field(init=False, repr=False, default="params")

    def __post_init__(self) -> None:
        set_rules = [n for n in ("rank", "energy", "params", "flops") if getattr(self, n) is not None]
        if len(set_rules) > 1:
            raise ValueError(f"set one of rank, energy, params, flops; got {', '.join(set_rules)}")
        if not set_rules:
            self.params = 0.5
            set_rules = ["params"]
        self._rule = set_rules[0]
        # Ranks read back from JSON/YAML come as lists; a Tucker pair is a tuple here.
        if isinstance(self.rank, list):
            self.rank = tuple(self.rank)
        if isinstance(self.rank, dict):
            self.rank = {k: tuple(v) if isinstance(v, list) else v for k, v in self.rank.items()}
        if self.energy is not None and not 0 < self.energy <= 1:
            raise ValueError(f"energy must be in (0, 1], got {self.energy}")
        for name in ("params", "flops"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"{name} is the fraction of the model's {name} to keep and must be "
                                 f"in (0, 1], got {value}")
        ranks = self.rank.values() if isinstance(self.rank, dict) else [self.rank]
        for r in ranks:
            if r is None:
                continue
            parts = r if isinstance(r, tuple) else (r,)
            if not all(isinstance(p, int) and not isinstance(p, bool) and p >= 1 for p in parts) \
                    or len(parts) > 2:
                raise ValueError(f"rank must be a positive int (or an (r_in, r_out) pair for tucker), got {r!r}")
        methods = self.method.values() if isinstance(self.method, dict) else [self.method]
        for m in methods:
            if m not in CONV_METHOD_NAMES:
                raise ValueError(f"unknown conv method {m!r}; choose one of {', '.join(CONV_METHOD_NAMES)}")
        if self.sensitivity_samples < 1:
            raise ValueError(f"sensitivity_samples must be >= 1, got {self.sensitivity_samples}")

    @property
    def rule(self) -> str:
        """Which rank rule is in force: ``rank``, ``energy``, ``params`` or ``flops``."""
        return self._rule

    def conv_method(self, name: str) -> str:
        if isinstance(self.method, str):
            return self.method
        for pattern, method in self.method.items():
            if fnmatch.fnmatchcase(name, pattern):
                return method
        return "channel"

    def rank_for(self, name: str) -> Rank | None:
        """The explicit rank for layer ``name`` (None: not given, the layer stays dense)."""
        if not isinstance(self.rank, dict):
            return self.rank
        for pattern, rank in self.rank.items():
            if fnmatch.fnmatchcase(name, pattern):
                return rank
        return None
