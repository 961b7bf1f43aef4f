"""The two config objects: :class:`BinaryConfig` and :class:`TernaryConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from penjing.core.select import LayerSelector
from penjing.lowbit.binary import SCALINGS

BINARY_METHODS = ("binaryconnect", "xnor")
TERNARY_METHODS = ("ttq", "twn")
#: Default thresholds: TTQ's t (fraction of max|W|), TWN's factor (of mean|W|).
DEFAULT_THRESHOLD = {"ttq": 0.05, "twn": 0.7}


@dataclass
class BinaryConfig:
    """Binary weights.

    ``method="binaryconnect"``: ``W = sign(V)`` (``scaling="none"`` by default);
    ``method="xnor"``: ``W = alpha_c * sign(V)``, ``alpha_c = mean|V|`` per output channel.
    ``scaling`` overrides the method's default (``"none"``, ``"tensor"``, ``"channel"``).
    ``stochastic``: BinaryConnect's stochastic sign in training. ``clip``: latent weights
    kept in ``[-1, 1]``. ``normalize``: divide each layer's latent weights by their max
    ``|V|`` when binarizing (allowed with ``scaling="none"`` only, where it leaves the forward
    unchanged, since ``sign(V / c) = sign(V)``; on by default for the stochastic sign).
    BinaryConnect's latent weights live in ``[-1, 1]``, while a trained layer's are ~0.05,
    where ``hard_sigmoid`` is ~0.5 and the stochastic sign would be a coin flip. The
    deterministic sign does not need it, and trains better without it at the same learning
    rate (Adam's steps are then large relative to the weights: more sign flips).
    ``activations``: a selector of layers whose *inputs* are binarized
    too (XNOR-Net); none by default. ``layers``/``exclude``: which layers (default: every
    Linear/Conv); ``keep_first_last``: the first and last weighted layers stay full precision.
    """

    method: Literal["binaryconnect", "xnor"] = "xnor"
    scaling: Literal["none", "tensor", "channel"] | None = None
    stochastic: bool = False
    clip: bool = True
    normalize: bool | None = None
    activations: LayerSelector = ()
    layers: LayerSelector = None
    exclude: LayerSelector = ()
    keep_first_last: bool = True

    def __post_init__(self) -> None:
        if self.method not in BINARY_METHODS:
            raise ValueError(f"binary method must be one of {BINARY_METHODS}, got {self.method!r}")
        if self.scaling is None:
            self.scaling = "none" if self.method == "binaryconnect" else "channel"
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {self.scaling!r}")
        if self.normalize is None:
            self.normalize = self.stochastic and self.scaling == "none"
        if self.normalize and self.scaling != "none":
            raise ValueError("normalize=True changes alpha = mean|V|; use it only with scaling='none'")


@dataclass
class TernaryConfig:
    """Ternary weights.

    ``method="ttq"``: threshold ``t * max|W|`` (``threshold`` is ``t``, in (0, 1), default
    0.05) and two learned scales per layer. ``method="twn"``: threshold
    ``factor * mean|W|`` (``threshold`` is the factor, default 0.7) and the computed scale
    ``mean(|W| above it)``. ``layers``/``exclude``/``keep_first_last`` as in
    :class:`BinaryConfig`.
    """

    method: Literal["ttq", "twn"] = "ttq"
    threshold: float | None = None
    layers: LayerSelector = None
    exclude: LayerSelector = ()
    keep_first_last: bool = True

    def __post_init__(self) -> None:
        if self.method not in TERNARY_METHODS:
            raise ValueError(f"ternary method must be one of {TERNARY_METHODS}, got {self.method!r}")
        if self.threshold is None:
            self.threshold = DEFAULT_THRESHOLD[self.method]
        t = self.threshold
        if self.method == "ttq" and not (0.0 < t < 1.0):
            raise ValueError(f"TTQ threshold t must be in (0, 1), got {t}")
        if self.method == "twn" and not (0.0 < t < float("inf")):
            raise ValueError(f"TWN threshold factor must be a positive number, got {t}")
