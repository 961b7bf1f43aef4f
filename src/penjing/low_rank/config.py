"""``LowRankConfig``: which layers, which factorisation, and how the ranks are chosen."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from penjing.core.config import MethodConfig, option
from penjing.core.select import LayerSelector

CONV_METHOD_NAMES = ("channel", "spatial", "tucker", "cp")
RULES = ("rank", "energy", "params", "flops")

Rank = int | tuple[int, int]


@dataclass
class LowRankConfig(MethodConfig):
    """How :func:`penjing.lowrank` factorises a model. Set at most one rank rule:

    * ``rank``: an explicit rank for every selected layer (an int; a ``(r_in, r_out)`` pair for
      Tucker-2), or a mapping ``{selector: rank}`` for per-layer ranks (the one override rule:
      first matching key wins; a layer no key matches keeps its dense form and is recorded
      as skipped; a key matching no layer is an error);
    * ``energy``: per layer, the smallest rank keeping this fraction of the squared singular
      values (in (0, 1]);
    * ``params``: a global budget, the fraction of the *factorisable* weights to keep (the
      weights of the layers lowrank acts on: selected, supported ones; biases, norms and
      skipped layers are not in it); every layer's rank is chosen together, greedily over
      singular values across layers, for the least total (relative, squared) error;
    * ``flops``: the same with the multiply-accumulates of those layers (needs an example
      input or data; embeddings are skipped under it: a lookup has no MACs to save).

    With none set, ``params=0.5``. ``conv_method`` picks the conv factorisation (``channel``,
    ``spatial``, ``tucker`` or ``cp``), one for all or per layer ``{selector: method}`` (convs
    no key matches use ``channel``); Linear layers use truncated SVD and Embedding tables
    ``E = A B`` (a narrower table followed by a Linear). ``sensitivity`` weights each layer's
    error in the budget by its measured loss sensitivity on ``data``. ``refine`` refines
    Tucker-2 by HOOI (needs tensorly); ``cp`` needs tensorly too.
    """

    method: ClassVar[str] = "lowrank"

    rank: Rank | dict[Any, Rank] | None = option(
        None, "explicit rank: one int (a [r_in, r_out] pair for tucker) or per layer {selector: rank}")
    energy: float | None = option(None, "per layer, keep this fraction of the squared singular values")
    params: float | None = option(None, "fraction of the factorisable layers' weights to keep "
                                  "(the default rule, 0.5)")
    flops: float | None = option(None, "fraction of the factorisable layers' multiply-accumulates "
                                 "to keep (needs an example input or data)")
    conv_method: str | dict[Any, str] = option(
        "channel", "conv factorisation: channel, spatial, tucker or cp; or per layer "
        "{selector: method}; Linear layers always use SVD")
    layers: LayerSelector = option(None, "which layers (name globs, type names; default: every "
                                   "Linear, Conv2d and Embedding)")
    exclude: LayerSelector = option(default_factory=tuple, help="layers to leave dense")
    sensitivity: bool = option(False, "weight each layer's error by its loss sensitivity "
                               "measured on the data")
    sensitivity_samples: int = option(512, "samples used to measure the sensitivity")
    refine: bool = option(False, "refine Tucker-2 by HOOI (needs tensorly)")
    _rule: str = field(init=False, repr=False, default="params")

    def __post_init__(self) -> None:
        set_rules = [n for n in RULES if getattr(self, n) is not None]
        if len(set_rules) > 1:
            raise ValueError(f"LowRankConfig: set one of rank, energy, params, flops; got "
                             f"{', '.join(set_rules)}")
        if not set_rules:
            self.params = 0.5
            set_rules = ["params"]
        self._rule = set_rules[0]
        # Ranks read back from JSON/YAML come as lists; a Tucker pair is a tuple here.
        if isinstance(self.rank, list):
            self.rank = tuple(self.rank)
        if isinstance(self.rank, Mapping):
            self.rank = {k: tuple(v) if isinstance(v, list) else v for k, v in self.rank.items()}
        if self.energy is not None and not (isinstance(self.energy, int | float) and 0 < self.energy <= 1):
            raise ValueError(f"LowRankConfig.energy must be in (0, 1], got {self.energy}")
        for name in ("params", "flops"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and 0 < value <= 1):
                raise ValueError(f"LowRankConfig.{name} is the fraction of the factorisable "
                                 f"layers' {name} to keep and must be in (0, 1], got {value}")
        ranks = self.rank.values() if isinstance(self.rank, Mapping) else [self.rank]
        for r in ranks:
            if r is None:
                continue
            parts = r if isinstance(r, tuple) else (r,)
            if not all(isinstance(p, int) and not isinstance(p, bool) and p >= 1 for p in parts) \
                    or len(parts) > 2:
                raise ValueError(f"LowRankConfig.rank must be a positive int (or an (r_in, r_out) "
                                 f"pair for tucker), got {r!r}")
        methods = self.conv_method.values() if isinstance(self.conv_method, Mapping) else [self.conv_method]
        for m in methods:
            if m not in CONV_METHOD_NAMES:
                raise ValueError(f"LowRankConfig.conv_method: unknown conv method {m!r}; choose one "
                                 f"of {', '.join(CONV_METHOD_NAMES)}")
        if isinstance(self.sensitivity_samples, bool) or not isinstance(self.sensitivity_samples, int) \
                or self.sensitivity_samples < 1:
            raise ValueError(f"LowRankConfig.sensitivity_samples must be an int >= 1, got "
                             f"{self.sensitivity_samples}")

    @property
    def rule(self) -> str:
        """Which rank rule is in force: ``rank``, ``energy``, ``params`` or ``flops``."""
        return self._rule
