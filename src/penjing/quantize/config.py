"""``QuantConfig``: what :func:`penjing.quantize` does, validated when it is built."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from penjing.core.select import LayerSelector
from penjing.quantize.core import QuantSpec, check_bits
from penjing.quantize.observers import check_observer

MODES = ("ptq", "qat")


@dataclass
class QuantConfig:
    """How to quantize a model.

    Weights: ``bits`` (2-8 or 16) per output channel (``per_channel``) or per tensor,
    ``symmetric`` (zero-point 0) or asymmetric, range by ``observer``. Activations: the input
    of every quantized layer at ``act_bits`` (``None`` = weight-only), asymmetric unsigned
    unless ``act_symmetric``, range by ``act_observer`` over the calibration data.
    ``act_reduce_range`` keeps activations to 7 bits of range, which the x86 int8 kernels
    need on CPUs without VNNI to avoid int16 saturation (see :mod:`.int_kernels`).
    ``weight_reduce_range=True, act_reduce_range=False`` is the other way to stay clear of
    it: 7-bit-range weights (per channel) and full 8-bit activations, which also spares the
    int8 Linear a clamp of its input (the kernel saturates on the full u8 grid itself).

    ``mode="qat"`` prepares for training: weight scales follow the weights (or are learned,
    ``lsq``), activation ranges track a moving average, until ``freeze_after`` steps.
    ``layer_bits`` overrides ``bits`` for layers whose name matches a glob
    (``{"fc3": 8}``): a mixed-precision plan, e.g. from :func:`penjing.quantize.sensitivity`.
    """

    bits: int = 8
    act_bits: int | None = 8
    mode: str = "ptq"
    per_channel: bool = True
    symmetric: bool = True
    observer: str = "minmax"
    act_symmetric: bool = False
    act_observer: str = "minmax"
    act_reduce_range: bool = True
    weight_reduce_range: bool = False
    percentile: float = 99.99
    lsq: bool = False
    freeze_after: int | None = None
    fold_bn: bool = True
    calib_samples: int | None = None
    calib_batch_size: int = 256
    layers: LayerSelector = None
    exclude: LayerSelector = ()
    layer_bits: dict[str, int] = field(default_factory=dict)
    progress: bool = True

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.act_bits is not None:
            check_bits(self.act_bits, "act_bits")
        for pattern, b in self.layer_bits.items():
            check_bits(b, f"layer_bits[{pattern!r}]")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        check_observer(self.observer, "observer")
        check_observer(self.act_observer, "act_observer")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.freeze_after is not None and self.freeze_after < 0:
            raise ValueError(f"freeze_after must be >= 0 steps, got {self.freeze_after}")
        if self.calib_samples is not None and self.calib_samples < 1:
            raise ValueError(f"calib_samples must be >= 1, got {self.calib_samples}")
        if self.calib_batch_size < 1:
            raise ValueError(f"calib_batch_size must be >= 1, got {self.calib_batch_size}")

    @property
    def weight_only(self) -> bool:
        return self.act_bits is None

    def bits_for(self, name: str) -> int:
        """Weight bits of layer ``name`` (the last matching ``layer_bits`` glob wins)."""
        bits = self.bits
        for pattern, b in self.layer_bits.items():
            if fnmatch.fnmatchcase(name, pattern):
                bits = b
        return bits

    def weight_spec(self, name: str, axis: int = 0) -> QuantSpec:
        bits = self.bits_for(name)
        return QuantSpec(bits=bits, symmetric=self.symmetric, signed=True, axis=axis if self.per_channel else None,
                         reduce_range=self.weight_reduce_range and bits == 8)

    def act_spec(self) -> QuantSpec:
        assert self.act_bits is not None
        reduce = self.act_reduce_range and self.act_bits == 8
        return QuantSpec(bits=self.act_bits, symmetric=self.act_symmetric, signed=self.act_symmetric,
                         axis=None, reduce_range=reduce)
