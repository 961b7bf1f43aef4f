"""``QuantConfig``: what :func:`penjing.quantize` does, declared once (API, recipe, CLI flags)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import nn

from penjing.core.config import MethodConfig, option
from penjing.core.override import is_per_layer, per_layer
from penjing.core.select import LayerSelector
from penjing.quantization.core import QuantSpec, check_bits
from penjing.quantization.observers import OBSERVERS

#: which side of the int8 product gets a 7-bit range -> (act_reduce_range, weight_reduce_range)
REDUCE_RANGE = {"weights": (False, True), "activations": (True, False), "none": (False, False)}
ACTIVATIONS = ("static", "dynamic", "none")


@dataclass
class QuantConfig(MethodConfig):
    """How to quantize a model.

    Weights: ``bits`` (2-8 or 16; ``layer_bits`` overrides it per layer, first matching key
    wins) per output channel (``per_channel``) or per tensor, ``symmetric`` or asymmetric,
    range by ``observer``. Activations (the input of every quantized layer):

    * ``"static"``: one scale per tensor calibrated on ``data`` (``act_bits``, range by
      ``act_observer``); consecutive int8 layers then hand each other int8 tensors;
    * ``"dynamic"``: one scale per row (per token / per sample) computed at run time, so a
      sample's output never depends on the rest of its batch (transformers);
    * ``"none"``: weight-only quantization.

    ``reduce_range`` picks which side of the x86 ``u8 x s8`` product gets a 7-bit range:
    AVX2 CPUs without VNNI add product pairs in int16, which saturates when both sides use
    their full 8 bits (see :mod:`.int_kernels`). ``"weights"`` (per-channel weights lose
    least), ``"activations"`` (torch.ao's x86 choice), ``"none"`` (VNNI CPUs) or ``"auto"``
    (default: ``"none"`` on a CPU with VNNI, detected at quantize time, else ``"weights"``;
    a model quantized with full ranges warns at convert on a CPU without VNNI).

    ``smooth_alpha`` migrates activation outliers into the weights before quantizing
    (SmoothQuant, Xiao et al. 2023): each Linear input channel ``j`` is divided by
    ``s_j = max|x_j|^a / max|W_j|^(1-a)`` and the weight column multiplied by it; ``"auto"``
    tunes ``a`` per layer on the calibration data.

    ``mode="qat"`` prepares for training: weight scales follow the weights (or are learned,
    ``lsq``), activation ranges track a moving average, until ``freeze_after`` steps
    (:func:`penjing.quantization.qat_fit` trains ``qat_epochs`` at ``lr``).
    """

    method: ClassVar[str] = "quantize"

    bits: int = option(8, "weight bits: 2-8, or 16")
    layer_bits: Mapping[Any, int] = option(
        default_factory=dict, help="per-layer weight bits, selector -> bits (first match wins), e.g. "
        "'{fc3: 8, conv: 6}'")
    activations: Literal["static", "dynamic", "none"] = option(
        "static", "activation scales: static (calibrated per tensor), dynamic (per row at run "
        "time) or none (weight-only)")
    act_bits: int = option(8, "activation bits: 2-8, or 16 (fake-quantized only)")
    mode: Literal["ptq", "qat"] = option("ptq", "post-training (ptq) or quantization-aware training (qat)")
    per_channel: bool = option(True, "one weight scale per output channel (else per tensor)")
    symmetric: bool = option(True, "symmetric weight grids (zero-point 0)")
    observer: Literal["minmax", "moving_average", "percentile", "mse"] = option(
        "minmax", "weight range observer")
    act_symmetric: bool = option(False, "symmetric signed activation grid")
    act_observer: Literal["minmax", "moving_average", "percentile", "mse"] = option(
        "minmax", "activation range observer")
    reduce_range: Literal["auto", "weights", "activations", "none"] = option(
        "auto", "which side of the int8 product gets a 7-bit range so AVX2 kernels cannot "
        "saturate: weights, activations (torch.ao's x86 choice), none (VNNI CPUs), or auto "
        "(none where this CPU has VNNI, else weights)")
    smooth_alpha: float | str | None = option(
        None, "SmoothQuant migration strength in [0, 1] for Linear layers, 'auto' to tune it "
        "per layer, or none", metavar="ALPHA")
    percentile: float = option(99.99, "percentile for the percentile observers")
    lsq: bool = option(False, "QAT: learn the step sizes (LSQ)")
    freeze_after: int | None = option(None, "QAT: freeze observers after this many steps")
    qat_epochs: int = option(3, "QAT: training epochs (qat_fit, the CLI and the recipe)")
    lr: float = option(1e-4, "QAT: learning rate")
    fold_bn: bool = option(True, "fold BatchNorm into the conv/linear before it")
    calib_samples: int | None = option(None, "calibration samples (default: all of data)")
    calib_batch_size: int = option(256, "batch size when data is a Dataset")
    int8: bool = option(False, "convert to int8 kernels afterwards (pj.convert)")
    int8_graph: bool | None = option(None, "with int8: pj.convert(graph=...): None (CNNs get int8 tensors "
                                     "flowing between layers), True (any model), False (layer by layer)")
    layers: LayerSelector = option(None, "layers to quantize (default: every supported layer)")
    exclude: LayerSelector = option((), "layers to leave in float")

    def __post_init__(self) -> None:
        check_bits(self.bits, "QuantConfig.bits")
        check_bits(self.act_bits, "QuantConfig.act_bits")
        if not isinstance(self.layer_bits, Mapping):
            raise ValueError(f"QuantConfig.layer_bits must be a mapping selector -> bits, got "
                             f"{self.layer_bits!r}")
        for key, b in self.layer_bits.items():
            check_bits(b, f"QuantConfig.layer_bits[{key!r}]")
        _choice(self.activations, ACTIVATIONS, "activations")
        _choice(self.mode, ("ptq", "qat"), "mode")
        _choice(self.observer, OBSERVERS, "observer")
        _choice(self.act_observer, OBSERVERS, "act_observer")
        _choice(self.reduce_range, ("auto", *REDUCE_RANGE), "reduce_range")
        if self.smooth_alpha is not None and self.smooth_alpha != "auto" and (
                isinstance(self.smooth_alpha, bool) or not isinstance(self.smooth_alpha, int | float)
                or not 0.0 <= float(self.smooth_alpha) <= 1.0):
            raise ValueError(f"QuantConfig.smooth_alpha must be in [0, 1], 'auto' or None, got "
                             f"{self.smooth_alpha!r}")
        if self.activations == "dynamic" and self.act_bits != 8:
            raise ValueError(f"QuantConfig.act_bits: dynamic activations are 8-bit (per-row int8 "
                             f"kernels), got {self.act_bits}")
        if self.activations == "dynamic" and self.mode == "qat":
            raise ValueError("QuantConfig.activations='dynamic' is post-training only; use "
                             "activations='static' with mode='qat'")
        if self.smooth_alpha is not None and self.activations != "dynamic":
            raise ValueError("QuantConfig.smooth_alpha moves activation outliers into the weights of "
                             "per-row quantized Linear layers; it needs activations='dynamic'")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"QuantConfig.percentile must be in (50, 100], got {self.percentile}")
        if self.freeze_after is not None and self.freeze_after < 0:
            raise ValueError(f"QuantConfig.freeze_after must be >= 0 steps, got {self.freeze_after}")
        if self.qat_epochs < 0:
            raise ValueError(f"QuantConfig.qat_epochs must be >= 0, got {self.qat_epochs}")
        if not self.lr > 0:
            raise ValueError(f"QuantConfig.lr must be > 0, got {self.lr}")
        if self.calib_samples is not None and self.calib_samples < 1:
            raise ValueError(f"QuantConfig.calib_samples must be >= 1, got {self.calib_samples}")
        if self.calib_batch_size < 1:
            raise ValueError(f"QuantConfig.calib_batch_size must be >= 1, got {self.calib_batch_size}")

    @property
    def weight_only(self) -> bool:
        return self.activations == "none"

    @property
    def resolved_reduce_range(self) -> str:
        if self.reduce_range != "auto":
            return self.reduce_range
        from penjing.quantization.cpu import has_vnni

        return "none" if has_vnni() else "weights"

    @property
    def act_reduce_range(self) -> bool:
        return REDUCE_RANGE[self.resolved_reduce_range][0]

    @property
    def weight_reduce_range(self) -> bool:
        return REDUCE_RANGE[self.resolved_reduce_range][1]

    def bits_per_layer(self, layers: list[tuple[str, nn.Module]]) -> dict[str, int]:
        """Weight bits of each layer: ``layer_bits`` by the one override rule (first matching
        key wins), ``bits`` for the rest."""
        if not self.layer_bits:
            return {name: self.bits for name, _ in layers}
        assert is_per_layer(self.layer_bits)
        return per_layer(self.layer_bits, layers, "QuantConfig.layer_bits", default=self.bits)

    def weight_spec(self, bits: int, axis: int = 0) -> QuantSpec:
        return QuantSpec(bits=bits, symmetric=self.symmetric, signed=True,
                         axis=axis if self.per_channel else None,
                         reduce_range=self.weight_reduce_range and bits == 8 and not self.weight_only)

    def act_spec(self) -> QuantSpec:
        reduce = self.act_reduce_range and self.act_bits == 8
        return QuantSpec(bits=self.act_bits, symmetric=self.act_symmetric, signed=self.act_symmetric,
                         axis=None, reduce_range=reduce)


def _choice(value: object, allowed: tuple[str, ...], field: str) -> None:
    if value not in allowed:
        raise ValueError(f"QuantConfig.{field} must be one of {list(allowed)}, got {value!r}")
