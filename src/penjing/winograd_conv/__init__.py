"""Winograd convolution: the same result with fewer multiplications (Lavin & Gray 2016).

* :func:`winograd_transforms` generates the exact matrices of F(m, r) by Cook-Toom;
* :class:`WinogradConv2d` is a drop-in ``nn.Conv2d`` (stride 1) computed with them;
* :func:`winograd` (``pj.winograd``) swaps the eligible convs of a model and records the
  per-layer decisions in ``pj.last_report(model)``; :func:`to_winograd` is its worker;
* :func:`conv_multiplications` counts direct vs Winograd multiplications for the cost model.
"""

from penjing.winograd_conv.autotune import choose_tile_by_cost, estimate_cost, measure_tiles
from penjing.winograd_conv.conv import WinogradConv2d
from penjing.winograd_conv.convert import (
    LayerDecision,
    WinogradConfig,
    WinogradReport,
    to_winograd,
    winograd,
)
from penjing.winograd_conv.cost import (
    ConvMultiplications,
    conv_multiplications,
    layer_multiplications,
    transform_multiplications,
)
from penjing.winograd_conv.functional import filter_transform, winograd_conv2d
from penjing.winograd_conv.transforms import DEFAULT_POINTS, WinogradTransforms, winograd_transforms

__all__ = [
    "DEFAULT_POINTS", "ConvMultiplications", "LayerDecision", "WinogradConfig", "WinogradConv2d",
    "WinogradReport", "WinogradTransforms", "choose_tile_by_cost", "conv_multiplications",
    "estimate_cost", "filter_transform", "layer_multiplications", "measure_tiles", "transform_multiplications",
    "to_winograd", "winograd", "winograd_conv2d", "winograd_transforms",
]
