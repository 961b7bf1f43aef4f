"""``PruneConfig``: what to prune, by which criterion, at which granularity, on which schedule."""

from __future__ import annotations

import re
from dataclasses import dataclass

from penjing.core.select import LayerSelector

CRITERIA = ("magnitude", "l1", "l2")
SCOPES = ("per-layer", "global")
SCHEDULES = ("one-shot", "iterative", "polynomial")
#: Structured granularities; both remove whole filters (output channels) of the selected layers
#: together with everything coupled to them (next layers' input channels, BatchNorm, residual adds).
STRUCTURED = ("channel", "filter")
_NM = re.compile(r"^(\d+):(\d+)$")


def _check_sparsity(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"sparsity{where} must be a number in [0, 1), got {value!r}")
    if value == 1:
        raise ValueError(f"sparsity{where} is 1.0: that would remove every weight of a layer and cut "
                         "the network; use a value in [0, 1)")
    if not 0 <= value < 1:
        raise ValueError(f"sparsity{where} must be in [0, 1), got {value}")
    return float(value)


@dataclass
class PruneConfig:
    """How :func:`penjing.pruning.prune` prunes a model.

    Amount (set ``sparsity`` or ``quality``; N:M implies its own sparsity):

    * ``sparsity``: fraction of each selected layer's weights (or filters, for structured
      granularity) to remove, in [0, 1); or a dict ``{layer glob: sparsity}`` for per-layer
      values (first matching key wins; selected layers matched by no key are left alone);
    * ``quality``: Han et al. (2015)'s rule: prune the weights with ``|w| < quality * std`` of
      the layer's (surviving) weights. Unstructured only.

    How: ``criterion`` scores weights (``magnitude`` = ``|w|``; for filters ``l1``/``l2`` norm,
    ``magnitude`` meaning L1); ``scope`` ``per-layer`` (each layer at its own sparsity) or
    ``global`` (one threshold over all selected layers); ``granularity`` ``unstructured``,
    ``"N:M"`` (e.g. ``"2:4"``: N kept in every M consecutive weights along the input dimension)
    or ``channel``/``filter`` (structured: layers physically shrink).

    When: ``schedule`` ``one-shot`` (prune once, then ``finetune_epochs``), ``iterative`` (Han:
    ``rounds`` of prune + ``finetune_epochs`` of fine-tuning, the kept fraction shrinking
    geometrically to the target) or ``polynomial`` (Zhu & Gupta 2017: during ``finetune_epochs``
    of training, sparsity rises from ``initial_sparsity`` to the target as a cubic between the
    fractions ``begin`` and ``end`` of the training steps, masks updated every ``frequency``
    steps). Fine-tuning uses :func:`penjing.train.fit` with ``lr`` and ``batch_size``.

    Which: ``layers`` / ``exclude`` are :func:`penjing.core.select` selectors (default: every
    Linear and Conv layer).
    """

    sparsity: float | dict[str, float] | None = None
    quality: float | None = None
    criterion: str = "magnitude"
    scope: str = "per-layer"
    granularity: str = "unstructured"
    schedule: str = "one-shot"
    rounds: int = 4
    finetune_epochs: int = 0
    lr: float = 1e-3
    batch_size: int = 64
    initial_sparsity: float = 0.0
    begin: float = 0.0
    end: float = 0.75
    frequency: int = 10
    layers: LayerSelector = None
    exclude: LayerSelector = ()

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {self.criterion!r}; choose one of {', '.join(CRITERIA)}")
        if self.scope not in SCOPES:
            raise ValueError(f"unknown scope {self.scope!r}; choose one of {', '.join(SCOPES)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        self._check_granularity()
        self._check_amount()
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"rounds must be an integer >= 1, got {self.rounds!r}")
        if self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be >= 0, got {self.finetune_epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.schedule == "polynomial":
            self._check_polynomial()

    # -- validation helpers ------------------------------------------------------------------
    @property
    def structured(self) -> bool:
        return self.granularity in STRUCTURED

    @property
    def n_m(self) -> tuple[int, int] | None:
        """``(N, M)`` for N:M granularity, else ``None``."""
        match = _NM.match(self.granularity)
        return (int(match.group(1)), int(match.group(2))) if match else None

    def _check_granularity(self) -> None:
        if self.granularity in ("unstructured", *STRUCTURED):
            return
        nm = self.n_m
        if nm is None:
            raise ValueError(f"unknown granularity {self.granularity!r}; choose unstructured, N:M "
                             "(e.g. '2:4'), channel or filter")
        n, m = nm
        if not 0 < n < m:
            raise ValueError(f"granularity {self.granularity!r}: N:M needs 0 < N < M (N weights kept "
                             "in every M)")

    def _check_amount(self) -> None:
        if self.sparsity is not None and self.quality is not None:
            raise ValueError("set either sparsity or quality, not both")
        if isinstance(self.sparsity, dict):
            if not self.sparsity:
                raise ValueError("the per-layer sparsity dict is empty; map layer globs to sparsities")
            for key, value in self.sparsity.items():
                if not isinstance(key, str):
                    raise ValueError(f"per-layer sparsity keys are layer globs (strings), got {key!r}")
                _check_sparsity(value, f" for {key!r}")
            if self.scope == "global":
                raise ValueError("scope='global' uses one sparsity for all selected layers; "
                                 "a per-layer dict needs scope='per-layer'")
        elif self.sparsity is not None:
            self.sparsity = _check_sparsity(self.sparsity, "")
        if self.quality is not None and not (isinstance(self.quality, int | float) and self.quality > 0):
            raise ValueError(f"quality (threshold = quality x std of the layer's weights) must be > 0, "
                             f"got {self.quality!r}")
        nm = self.n_m
        if nm is not None:
            implied = 1 - nm[0] / nm[1]
            if self.quality is not None or (self.sparsity is not None and not (
                    isinstance(self.sparsity, float) and abs(self.sparsity - implied) < 1e-9)):
                raise ValueError(f"granularity {self.granularity!r} fixes the sparsity at {implied:g}; "
                                 "leave sparsity and quality unset")
            if self.schedule != "one-shot":
                raise ValueError(f"granularity {self.granularity!r} has a fixed pattern: use "
                                 "schedule='one-shot' (with finetune_epochs to recover accuracy)")
            if self.scope == "global":
                raise ValueError(f"granularity {self.granularity!r} is chosen group by group; "
                                 "scope='global' does not apply")
            self.sparsity = implied
            return
        if self.sparsity is None and self.quality is None:
            raise ValueError("set sparsity (a fraction in [0, 1), or a dict of layer glob -> "
                             "sparsity) or quality (Han's threshold: quality x std)")
        if self.structured:
            if self.quality is not None:
                raise ValueError("quality applies to unstructured pruning; structured pruning "
                                 "takes sparsity (the fraction of filters to remove)")
            if self.schedule == "polynomial":
                raise ValueError("the polynomial schedule updates masks during training; structured "
                                 "pruning removes filters physically: use one-shot or iterative")
        if self.quality is not None and self.schedule == "polynomial":
            raise ValueError("the polynomial schedule ramps a sparsity; give sparsity, not quality")

    def _check_polynomial(self) -> None:
        if isinstance(self.sparsity, dict):
            raise ValueError("the polynomial schedule ramps one sparsity; a per-layer dict is not "
                             "supported with it")
        if not 0 <= self.initial_sparsity <= (self.sparsity or 0):
            raise ValueError(f"initial_sparsity must be in [0, sparsity={self.sparsity}], got "
                             f"{self.initial_sparsity}")
        if not 0 <= self.begin < self.end <= 1:
            raise ValueError(f"polynomial schedule needs 0 <= begin < end <= 1 (fractions of the "
                             f"training steps), got begin={self.begin}, end={self.end}")
        if isinstance(self.frequency, bool) or not isinstance(self.frequency, int) or self.frequency < 1:
            raise ValueError(f"frequency (steps between mask updates) must be an integer >= 1, got "
                             f"{self.frequency!r}")
        if self.finetune_epochs < 1:
            raise ValueError("the polynomial schedule prunes during training: set finetune_epochs >= 1")
