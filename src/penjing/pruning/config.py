"""``PruneConfig``: what to prune, by which criterion, at which granularity, on which schedule."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from penjing.core.config import MethodConfig, option
from penjing.core.select import LayerSelector

CRITERIA = ("magnitude", "l1", "l2")
SCOPES = ("per-layer", "global")
SCHEDULES = ("one-shot", "iterative", "polynomial")
#: Structured granularities; both remove whole filters (output channels) of the selected layers
#: together with everything coupled to them (next layers' input channels, BatchNorm, residual adds).
STRUCTURED = ("channel", "filter")
_NM = re.compile(r"^(\d+):(\d+)$")


def check_sparsity(value: object, where: str = "PruneConfig.sparsity") -> float:
    """``value`` as a sparsity in [0, 1), or a ValueError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where} must be a number in [0, 1), got {value!r}")
    if value == 1:
        raise ValueError(f"{where} is 1.0: that would remove every weight of a layer and cut the "
                         "network; use a value in [0, 1)")
    if not 0 <= value < 1:
        raise ValueError(f"{where} must be in [0, 1), got {value}")
    return float(value)


@dataclass
class PruneConfig(MethodConfig):
    """How :func:`penjing.prune` prunes a model.

    Amount (set ``sparsity`` or ``quality``; N:M implies its own sparsity):

    * ``sparsity``: fraction of each selected layer's weights (or filters, for structured
      granularity) to remove, in [0, 1); or per layer ``{selector: sparsity}`` by the one
      override rule (first matching key wins; keys are globs, type names or the roles
      ``conv``/``fc``/``embedding``/``first``/``last``/``*``; layers no key matches stay dense);
      or ``"auto"``: each layer at the largest sparsity whose metric drop, pruned alone, stays
      within ``tolerance`` points (a sensitivity scan on ``validation``, else on ``data``);
    * ``quality``: Han et al. (2015)'s rule: prune the weights with ``|w| < quality * std`` of
      the layer's (surviving) weights. Unstructured only.

    A layer always keeps at least one weight: an amount that would remove every weight of a
    layer (``sparsity=0.999999`` on a small layer, ``quality=1e9``) is refused naming the layer.

    How: ``criterion`` scores weights (``magnitude`` = ``|w|``; for filters ``l1``/``l2`` norm,
    ``magnitude`` meaning L1); ``scope`` ``per-layer`` or ``global`` (one threshold over all
    selected layers); ``granularity`` ``unstructured``, ``"N:M"`` (e.g. ``"2:4"``: N kept in
    every M consecutive weights along the input dimension, the embedding dimension for
    embeddings) or ``channel``/``filter`` (structured: layers physically shrink).

    When: ``schedule`` ``one-shot`` (prune once, then ``finetune_epochs``), ``iterative``
    (``rounds`` of prune + ``finetune_epochs``, the kept fraction shrinking geometrically) or
    ``polynomial`` (Zhu & Gupta 2017: sparsity rises from ``initial_sparsity`` to the target as
    a cubic between the fractions ``begin`` and ``end`` of the training steps, masks updated
    every ``frequency`` steps).
    """

    method: ClassVar[str] = "prune"

    sparsity: float | Mapping[Any, float] | Literal["auto"] | None = option(
        None, "fraction of weights (filters, for channel) to remove per layer, in [0, 1); per layer "
        "as selector=value pairs (fc*=0.9,last=0.7; first match wins); or auto (from a sensitivity scan)")
    quality: float | None = option(None, "instead of sparsity: prune |w| < QUALITY x std of the "
                                   "layer's weights (Han et al. 2015)")
    criterion: Literal["magnitude", "l1", "l2"] = option("magnitude", "weight / filter score")
    scope: Literal["per-layer", "global"] = option("per-layer", "one threshold per layer, or one "
                                                   "over all selected layers")
    granularity: str = option("unstructured", "unstructured, N:M (e.g. 2:4) or channel/filter "
                              "(physically smaller layers)")
    schedule: Literal["one-shot", "iterative", "polynomial"] = option("one-shot", "when masks "
                                                                      "are computed")
    rounds: int = option(4, "iterative: prune + fine-tune rounds")
    finetune_epochs: int = option(0, "epochs of fine-tuning (per round for iterative; the whole "
                                  "run for polynomial)")
    lr: float = option(1e-3, "fine-tuning learning rate")
    batch_size: int = option(64, "fine-tuning batch size (when data is a Dataset)")
    initial_sparsity: float = option(0.0, "polynomial: sparsity at the start of the ramp")
    begin: float = option(0.0, "polynomial: fraction of the training steps where the ramp starts")
    end: float = option(0.75, "polynomial: fraction of the training steps where it ends")
    frequency: int = option(10, "polynomial: steps between mask updates")
    tolerance: float = option(1.0, "sparsity=auto: metric drop (points) allowed per layer")
    layers: LayerSelector = option(None, "layers to prune: globs, type names (default: every "
                                   "layer with a weight matrix)")
    exclude: LayerSelector = option((), "layers to leave alone")
    seed: int = option(0, "seed for fine-tuning")
    validation: Any = option(None, "sparsity=auto: data the scan evaluates on (default: data=)",
                             cli=False, recipe=False)
    on_round: Callable | None = option(None, "called as on_round(model, info) after every round "
                                       "(info: RoundInfo)", cli=False, recipe=False)

    def __post_init__(self) -> None:
        for name, allowed in (("criterion", CRITERIA), ("scope", SCOPES), ("schedule", SCHEDULES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"PruneConfig.{name}: unknown {name} {getattr(self, name)!r}; "
                                 f"choose one of {', '.join(allowed)}")
        self._check_granularity()
        self._check_amount()
        for name in ("rounds", "batch_size", "frequency"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PruneConfig.{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.finetune_epochs, bool) or not isinstance(self.finetune_epochs, int) \
                or self.finetune_epochs < 0:
            raise ValueError(f"PruneConfig.finetune_epochs must be an integer >= 0, got "
                             f"{self.finetune_epochs!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"PruneConfig.lr must be a finite number > 0, got {self.lr!r}")
        if not (isinstance(self.tolerance, int | float) and 0 <= self.tolerance < math.inf):
            raise ValueError(f"PruneConfig.tolerance (metric points) must be >= 0, got {self.tolerance!r}")
        if self.schedule == "polynomial":
            self._check_polynomial()

    @property
    def structured(self) -> bool:
        return self.granularity in STRUCTURED

    @property
    def n_m(self) -> tuple[int, int] | None:
        """``(N, M)`` for N:M granularity, else ``None``."""
        match = _NM.match(self.granularity) if isinstance(self.granularity, str) else None
        return (int(match.group(1)), int(match.group(2))) if match else None

    def _check_granularity(self) -> None:
        if self.granularity in ("unstructured", *STRUCTURED):
            return
        nm = self.n_m
        if nm is None:
            raise ValueError(f"PruneConfig.granularity: unknown granularity {self.granularity!r}; "
                             "choose unstructured, N:M (e.g. '2:4'), channel or filter")
        if not 0 < nm[0] < nm[1]:
            raise ValueError(f"PruneConfig.granularity {self.granularity!r}: N:M needs 0 < N < M "
                             "(N weights kept in every M)")

    def _check_amount(self) -> None:
        if self.sparsity is not None and self.quality is not None:
            raise ValueError("PruneConfig: set either sparsity or quality, not both")
        if isinstance(self.sparsity, Mapping):
            if not self.sparsity:
                raise ValueError("PruneConfig.sparsity is an empty mapping: give one value, or "
                                 "selector -> sparsity pairs")
            for key, value in self.sparsity.items():
                check_sparsity(value, f"PruneConfig.sparsity[{key!r}]")
            if self.scope == "global":
                raise ValueError("PruneConfig.scope='global' uses one sparsity for all selected "
                                 "layers; per-layer sparsities need scope='per-layer'")
        elif self.sparsity == "auto":
            if self.granularity != "unstructured" or self.scope == "global":
                raise ValueError("PruneConfig.sparsity='auto' picks per-layer sparsities for "
                                 "unstructured, per-layer pruning")
        elif self.sparsity is not None:
            self.sparsity = check_sparsity(self.sparsity)
        if self.quality is not None and not (isinstance(self.quality, int | float)
                                             and not isinstance(self.quality, bool)
                                             and 0 < self.quality < math.inf):
            raise ValueError(f"PruneConfig.quality (threshold = quality x std of the layer's "
                             f"weights) must be a finite number > 0, got {self.quality!r}")
        nm = self.n_m
        if nm is not None:
            implied = 1 - nm[0] / nm[1]
            if self.sparsity is not None or self.quality is not None:
                raise ValueError(f"PruneConfig.granularity {self.granularity!r} fixes the sparsity "
                                 f"at {implied:g}; leave sparsity and quality unset")
            if self.schedule != "one-shot":
                raise ValueError(f"PruneConfig.granularity {self.granularity!r} has a fixed "
                                 "pattern: use schedule='one-shot' (with finetune_epochs)")
            if self.scope == "global":
                raise ValueError(f"PruneConfig.granularity {self.granularity!r} is chosen group by "
                                 "group; scope='global' does not apply")
            return
        if self.sparsity is None and self.quality is None:
            raise ValueError("PruneConfig: set sparsity (a fraction in [0, 1), per-layer "
                             "selector -> fraction pairs, or auto) or quality (Han's threshold: "
                             "quality x std)")
        if self.structured:
            if self.quality is not None:
                raise ValueError("PruneConfig.quality applies to unstructured pruning; structured "
                                 "pruning takes sparsity (the fraction of filters to remove)")
            if self.schedule == "polynomial":
                raise ValueError("PruneConfig.schedule='polynomial' updates masks during training; "
                                 "structured pruning removes filters physically: use one-shot or "
                                 "iterative")
        if self.quality is not None and self.schedule == "polynomial":
            raise ValueError("PruneConfig.schedule='polynomial' ramps a sparsity; give sparsity, "
                             "not quality")

    def _check_polynomial(self) -> None:
        if not isinstance(self.sparsity, float):
            raise ValueError("PruneConfig.schedule='polynomial' ramps one sparsity: give a single "
                             "number")
        if not 0 <= self.initial_sparsity <= self.sparsity:
            raise ValueError(f"PruneConfig.initial_sparsity must be in [0, sparsity={self.sparsity}], "
                             f"got {self.initial_sparsity}")
        if not 0 <= self.begin < self.end <= 1:
            raise ValueError(f"PruneConfig.begin/end: the polynomial schedule needs 0 <= begin < "
                             f"end <= 1 (fractions of the training steps), got begin={self.begin}, "
                             f"end={self.end}")
        if self.finetune_epochs < 1:
            raise ValueError("PruneConfig.schedule='polynomial' prunes during training: set "
                             "finetune_epochs >= 1")
