"""``QuantConfig``: what :func:`penjing.quantization` does, validated when it is built."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from penjing.core.select import LayerSelector
from penjing.quantization.core import QuantSpec, check_bits
from penjing.quantization.observers import check_observer

MODES = ("ptq", "qat")
#: which side of the int8 product gets a 7-bit range -> (act_reduce_range, weight_reduce_range)
REDUCE_RANGE = {"weights": (False, True), "activations": (True, False), "none": (False, False)}


def reduce_range_flags(side: str) -> dict[str, bool]:
    """``QuantConfig`` keyword arguments for ``reduce_range`` = weights / activations / none."""
    if side not in REDUCE_RANGE:
        raise ValueError(f"reduce_range must be one of {list(REDUCE_RANGE)}, got {side!r}")
    act, weight = REDUCE_RANGE[side]
    return {"act_reduce_range": act, "weight_reduce_range": weight}


@dataclass
class QuantConfig:
    """How to quantize a model.

    Weights: ``bits`` (2-8 or 16) per output channel (``per_channel``) or per tensor,
    ``symmetric`` (zero-point 0) or asymmetric, range by ``observer``. Activations: the input
    of every quantized layer at ``act_bits`` (``None`` = weight-only), asymmetric unsigned
    unless ``act_symmetric``, range by ``act_observer`` over the calibration data.
    On x86 CPUs without VNNI (AVX2) the int8 kernels add ``u8 x s8`` products in pairs in
    int16, which saturates when both sides use their full 8 bits, so one side gives up a bit
    (see :mod:`.int_kernels`). By default that is the weights (``weight_reduce_range``: codes
    in [-64, 63], still stored as int8, one scale per channel so the loss is small) and the
    activations keep all 8 bits: the int8 Linear then needs no clamp of its input, and the
    logits are closer to float than with torch.ao's choice, ``act_reduce_range=True`` (7-bit
    activations). On a CPU with VNNI both can be False (full 8 bits on both sides).
    :func:`reduce_range_flags` maps the CLI / recipe names ``weights``, ``activations`` and
    ``none`` to these two flags.

    ``mode="qat"`` prepares for training: weight scales follow the weights (or are learned,
    ``lsq``), activation ranges track a moving average, until ``freeze_after`` steps.
    ``layer_bits`` overrides ``bits`` for layers whose name matches a glob
    (``{"fc3": 8}``): a mixed-precision plan, e.g. from :func:`penjing.quantization.sensitivity`.
    """

    bits: int = 8
    act_bits: int | None = 8
    mode: str = "ptq"
    per_channel: bool = True
    symmetric: bool = True
    observer: str = "minmax"
    act_symmetric: bool = False
    act_observer: str = "minmax"
    act_reduce_range: bool = False
    weight_reduce_range: bool = True
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
                         reduce_range=self.weight_reduce_range and bits == 8 and not self.weight_only)

    def act_spec(self) -> QuantSpec:
        assert self.act_bits is not None
        reduce = self.act_reduce_range and self.act_bits == 8
        return QuantSpec(bits=self.act_bits, symmetric=self.act_symmetric, signed=self.act_symmetric,
                         axis=None, reduce_range=reduce)
