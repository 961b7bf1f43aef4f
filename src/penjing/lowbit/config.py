"""The two config objects: :class:`BinaryConfig` and :class:`TernaryConfig`.

The algorithm field is ``algorithm`` (not ``method``): ``method`` is the verb name every
:class:`~penjing.core.config.MethodConfig` carries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from penjing.core.config import MethodConfig, option
from penjing.core.select import LayerSelector
from penjing.lowbit.binary import SCALINGS

BINARY_ALGORITHMS = ("binaryconnect", "xnor")
TERNARY_ALGORITHMS = ("ttq", "twn")
#: Default thresholds: TTQ's t (fraction of max|W|), TWN's factor (of mean|W|).
DEFAULT_THRESHOLD = {"ttq": 0.05, "twn": 0.7}

_LAYERS_HELP = ("which layers (a name glob, a type name, or a list of them; default: every "
                "Linear, ConvNd, ConvTransposeNd and Embedding)")


@dataclass
class BinaryConfig(MethodConfig):
    """Binary weights.

    ``algorithm="binaryconnect"``: ``W = sign(V)`` (``scaling="none"`` by default);
    ``algorithm="xnor"``: ``W = alpha_c * sign(V)``, ``alpha_c = mean|V|`` per output channel
    (the output axis of the layer's weight layout: dim 1 of a ConvTranspose weight).
    ``scaling`` overrides the algorithm's default (``"none"``, ``"tensor"``, ``"channel"``).
    ``stochastic``: BinaryConnect's stochastic sign in training. ``clip``: latent weights
    kept in ``[-1, 1]``. ``normalize``: divide each layer's latent weights by their max
    ``|V|`` when binarizing (allowed with ``scaling="none"`` only, where it leaves the forward
    unchanged, since ``sign(V / c) = sign(V)``; on by default for the stochastic sign).
    BinaryConnect's latent weights live in ``[-1, 1]``, while a trained layer's are ~0.05,
    where ``hard_sigmoid`` is ~0.5 and the stochastic sign would be a coin flip.
    ``activations``: a selector of layers whose *inputs* are binarized too (XNOR-Net); none
    by default. ``layers``/``exclude``: which layers; ``keep_first_last``: the first and last
    weighted layers stay full precision (recorded as skipped).
    """

    method: ClassVar[str] = "binarize"

    algorithm: Literal["binaryconnect", "xnor"] = option("xnor", "binaryconnect (sign) or xnor "
                                                         "(sign times mean|V| per output channel)")
    scaling: Literal["none", "tensor", "channel"] | None = option(
        None, "override the algorithm's scale: none, tensor or channel (binaryconnect: none, "
        "xnor: channel)")
    stochastic: bool = option(False, "BinaryConnect's stochastic sign while training")
    clip: bool = option(True, "keep the latent weights in [-1, 1]")
    normalize: bool | None = option(None, "divide each layer's latent weights by max|V| "
                                    "(scaling=none only; default: on with stochastic)")
    activations: LayerSelector = option(default_factory=tuple, help="layers whose inputs are "
                                        "binarized too (XNOR-Net)")
    layers: LayerSelector = option(None, _LAYERS_HELP)
    exclude: LayerSelector = option(default_factory=tuple, help="layers to leave full precision")
    keep_first_last: bool = option(True, "keep the first and last weighted layers full precision")

    def __post_init__(self) -> None:
        if self.algorithm not in BINARY_ALGORITHMS:
            raise ValueError(f"BinaryConfig.algorithm must be one of {BINARY_ALGORITHMS}, "
                             f"got {self.algorithm!r}")
        if self.scaling is None:
            self.scaling = "none" if self.algorithm == "binaryconnect" else "channel"
        if self.scaling not in SCALINGS:
            raise ValueError(f"BinaryConfig.scaling must be one of {SCALINGS}, got {self.scaling!r}")
        if self.normalize is None:
            self.normalize = self.stochastic and self.scaling == "none"
        if self.normalize and self.scaling != "none":
            raise ValueError("BinaryConfig.normalize=True changes alpha = mean|V|; use it only "
                             "with scaling='none'")
        if self.activations is None:
            self.activations = ()


@dataclass
class TernaryConfig(MethodConfig):
    """Ternary weights.

    ``algorithm="ttq"``: threshold ``t * max|W|`` (``threshold`` is ``t``, in (0, 1), default
    0.05) and two learned scales per layer. ``algorithm="twn"``: threshold
    ``factor * mean|W|`` (``threshold`` is the factor, default 0.7) and the computed scale
    ``mean(|W| above it)``. ``threshold`` may be per layer (``{"fc*": 0.1, "*": 0.05}``, first
    match wins). ``layers``/``exclude``/``keep_first_last`` as in :class:`BinaryConfig`.
    """

    method: ClassVar[str] = "ternarize"

    algorithm: Literal["ttq", "twn"] = option("ttq", "ttq (learned scales Wp, Wn) or twn "
                                              "(computed scale)")
    threshold: float | dict | None = option(
        None, "TTQ: t in (0, 1) of max|W| (default 0.05); TWN: factor of mean|W| (default 0.7); "
        "one value or per layer {selector: value}")
    layers: LayerSelector = option(None, _LAYERS_HELP)
    exclude: LayerSelector = option(default_factory=tuple, help="layers to leave full precision")
    keep_first_last: bool = option(True, "keep the first and last weighted layers full precision")

    def __post_init__(self) -> None:
        if self.algorithm not in TERNARY_ALGORITHMS:
            raise ValueError(f"TernaryConfig.algorithm must be one of {TERNARY_ALGORITHMS}, "
                             f"got {self.algorithm!r}")
        if self.threshold is None:
            self.threshold = DEFAULT_THRESHOLD[self.algorithm]
        values = self.threshold.values() if isinstance(self.threshold, dict) else [self.threshold]
        for t in values:
            check_threshold(self.algorithm, t)


def check_threshold(algorithm: str, t: object) -> float:
    """``t`` as a float, or the ValueError naming TernaryConfig.threshold."""
    if isinstance(t, bool) or not isinstance(t, int | float):
        raise ValueError(f"TernaryConfig.threshold must be a number, got {t!r}")
    if algorithm == "ttq" and not (0.0 < t < 1.0):
        raise ValueError(f"TernaryConfig.threshold: TTQ threshold t must be in (0, 1), got {t}")
    if algorithm == "twn" and not (0.0 < t < float("inf")):
        raise ValueError(f"TernaryConfig.threshold: TWN threshold factor must be a positive "
                         f"number, got {t}")
    return float(t)
