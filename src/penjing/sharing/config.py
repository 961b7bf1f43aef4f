"""``ShareConfig``: how many bits (centroids) per layer, how to start k-means, which layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.nn.modules.conv import _ConvNd

from penjing.sharing.kmeans import INITS

#: Deep Compression's widths: 8 bits (256 centroids) for conv layers, 5 bits (32) for fc.
DEFAULT_BITS: dict[str, int] = {"conv": 8, "Linear": 5}


@dataclass
class ShareConfig:
    """Weight sharing settings.

    ``bits``: one int for every layer, or a dict whose keys are layer names (exact), module type
    names (``"Linear"``, ``"Conv2d"``), ``"conv"`` (any ConvNd) or ``"*"`` (anything else);
    looked up in that order. ``init``: ``linear`` (default, the paper's best), ``density`` or
    ``random``. ``layers``/``exclude``: a selector (see :func:`penjing.core.select.select`).
    ``bias_bits``: share biases too (off by default, as in the paper).
    """

    bits: int | dict[str, int] = field(default_factory=lambda: dict(DEFAULT_BITS))
    init: str = "linear"
    layers: Any = None
    exclude: Any = ()
    max_iter: int = 100
    seed: int = 0
    #: also share each layer's bias at this many bits (``None``: biases stay float). Not in the
    #: paper, where biases are a negligible part of the model; in small models they are not.
    bias_bits: int | None = None
    #: move centroids whose cluster runs empty onto the worst-fitting values, so all 2^b
    #: entries are used (linear init on a pruned layer puts some in the empty gap around
    #: zero). ``False`` leaves them unused: fewer distinct values, a lower index entropy and a
    #: smaller file, at a coarser fit (the shipped Deep Compression recipes measured both).
    relocate_empty: bool = True

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"ShareConfig.init must be one of {', '.join(INITS)}, got {self.init!r}")
        widths = [*(self.bits.values() if isinstance(self.bits, dict) else [self.bits]),
                  *([self.bias_bits] if self.bias_bits is not None else [])]
        for b in widths:
            if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 16:
                raise ValueError(f"ShareConfig.bits must be integers in [1, 16], got {b!r}")
        if self.max_iter < 1:
            raise ValueError(f"ShareConfig.max_iter must be >= 1, got {self.max_iter}")

    def bits_for(self, name: str, module: nn.Module) -> int | None:
        """Bits for layer ``name``; ``None`` when the dict names nothing that matches."""
        if not isinstance(self.bits, dict):
            return self.bits
        # a parametrized module's class is torch's "Parametrized<Type>" subclass: use the base
        kind = next(c.__name__ for c in type(module).__mro__ if not c.__name__.startswith("Parametrized"))
        family = "conv" if isinstance(module, _ConvNd) else "fc" if isinstance(module, nn.Linear) else None
        for key in (name, kind, family, "*"):
            if key is not None and key in self.bits:
                return self.bits[key]
        return None
