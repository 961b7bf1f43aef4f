"""``ShareConfig``: how many bits (centroids) per layer, how to start k-means, which layers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import nn
from torch.nn.modules.conv import _ConvNd

from penjing.core.config import MethodConfig, option
from penjing.core.select import LayerSelector
from penjing.sharing.kmeans import INITS

#: Deep Compression's widths (Han et al. 2016): 8 bits (256 centroids) for conv layers, 5 bits
#: (32) for fully connected ones; embedding tables, matrices like fc layers', get 5 too.
CONV_BITS, OTHER_BITS = 8, 5
DEFAULT_BITS = {"conv": CONV_BITS, "fc": OTHER_BITS, "embedding": OTHER_BITS}


def default_bits(module: nn.Module) -> int:
    """The Deep Compression width of ``module`` (``ShareConfig.bits=None``)."""
    return CONV_BITS if isinstance(module, _ConvNd) else OTHER_BITS


def _check_widths(value: Any, where: str, *, optional: bool = False) -> None:
    values = list(value.values()) if isinstance(value, Mapping) else [value]
    if isinstance(value, Mapping) and not value:
        raise ValueError(f"{where} is an empty mapping: give one width, or selector -> width pairs")
    for b in values:
        if optional and b is None:
            continue
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 16:
            raise ValueError(f"{where} must be integers in [1, 16], got {b!r}")


@dataclass
class ShareConfig(MethodConfig):
    """Weight sharing settings (Deep Compression's k-means codebooks).

    ``bits``: one width for every layer, or per layer ``{selector: bits}`` by the one override
    rule (first matching key wins; keys are globs, type names or the roles
    ``conv``/``fc``/``embedding``/``first``/``last``/``*``; layers no key matches are left
    unshared and reported); default: 8 bits for conv layers, 5 for the rest (the paper's).
    ``bias_bits``: share biases too, at this many bits (one value or per layer; not in the
    paper, where biases are negligible; in small models they are not).
    """

    method: ClassVar[str] = "share"

    bits: int | Mapping[Any, int] | None = option(
        None, "bits per weight index (2^bits centroids): one width, or selector=bits pairs "
        "(conv=8,fc=5; first match wins); default 8 for conv, 5 for the rest")
    init: Literal["linear", "density", "random"] = option("linear", "centroid initialization "
                                                          "(linear: the paper's best)")
    layers: LayerSelector = option(None, "layers to share: globs, type names (default: every "
                                   "layer with a weight matrix)")
    exclude: LayerSelector = option((), "layers to leave alone")
    max_iter: int = option(100, "k-means iterations at most")
    seed: int = option(0, "seed of the random init")
    bias_bits: int | Mapping[Any, int] | None = option(None, "also share each layer's bias at this "
                                                       "many bits (default: biases stay float)")
    relocate_empty: bool = option(True, "move centroids whose cluster runs empty onto the worst-"
                                  "fitting values (no: fewer distinct values, smaller file)")

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"ShareConfig.init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.bits is not None:
            _check_widths(self.bits, "ShareConfig.bits")
        if self.bias_bits is not None:
            _check_widths(self.bias_bits, "ShareConfig.bias_bits", optional=True)
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"ShareConfig.max_iter must be an integer >= 1, got {self.max_iter!r}")
