"""Layer extraction for the hardware models: the one tracer lives in :mod:`penjing.core.trace`
(dispatch-level, so functional compute such as attention and einsum is counted); this module
keeps the name every hardware model and user script imports."""

from penjing.core.trace import Layer, layer_macs, trace

__all__ = ["Layer", "layer_macs", "trace"]
