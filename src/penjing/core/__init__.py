"""What every method shares: selecting and swapping modules, parametrizations, accounting."""

from penjing.core.params import attach, bake, is_parametrized, parametrizations
from penjing.core.select import LayerSelector, select, swap, type_name
from penjing.core.stats import LayerStats, layer_stats

__all__ = [
    "LayerSelector",
    "LayerStats",
    "attach",
    "bake",
    "is_parametrized",
    "layer_stats",
    "parametrizations",
    "select",
    "swap",
    "type_name",
]
