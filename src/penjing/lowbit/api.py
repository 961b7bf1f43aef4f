"""The verbs: :func:`binarize` and :func:`ternarize` (model in, model out, in place)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from penjing.core import structure
from penjing.core.config import Run, verb
from penjing.core.layers import pick_layers, weight_layout
from penjing.core.override import per_layer
from penjing.core.params import attach, original, parametrizations
from penjing.lowbit.binary import BinaryWeight, binarize_input
from penjing.lowbit.config import BinaryConfig, TernaryConfig, check_threshold
from penjing.lowbit.policy import choose_layers
from penjing.lowbit.ternary import TTQWeight, TWNWeight

#: Every lowbit parametrization type (a layer carries at most one of them).
LOWBIT_TYPES = (BinaryWeight, TWNWeight, TTQWeight)


def _before(module: nn.Module) -> str:
    ps = parametrizations(module)
    base = f"{str(original(module).dtype).removeprefix('torch.')} dense"
    return base + (f" ({', '.join(type(p).__name__ for p in ps)})" if ps else "")


@verb(BinaryConfig)
def binarize(model: nn.Module, config: BinaryConfig, run: Run) -> None:
    """Make the selected layers' weights binary (BinaryConnect / XNOR), in place.

    Each selected layer gets a :class:`~penjing.lowbit.BinaryWeight` parametrization: the
    latent real weights stay trainable and :func:`penjing.fit` trains them through the
    straight-through estimator; :func:`penjing.bake` freezes ``alpha * sign(V)`` into plain
    tensors and :func:`penjing.save` stores one bit per weight. Layers the default selector
    meets that cannot be binarized (and the first/last layers, unless
    ``keep_first_last=False``) are recorded as skipped in ``pj.last_report(model)``.
    """
    chosen = choose_layers(model, config.layers, config.exclude, config.keep_first_last,
                           "binarize", LOWBIT_TYPES, run.report)
    for name, module in chosen:
        before = _before(module)
        axis = weight_layout(module).out_axis
        attach(module, BinaryWeight(config.scaling, config.stochastic, config.clip, out_axis=axis))
        if config.normalize:
            with torch.no_grad():
                v = original(module)
                peak = v.abs().max()
                if peak > 0:  # an all-zero layer stays zero (and sign(0) = +1)
                    v.div_(peak)
        scale = {"none": "+-1", "tensor": "+-alpha per tensor",
                 "channel": f"+-alpha per output channel (axis {axis})"}[config.scaling]
        run.report.touch(name, module, before, f"1-bit {config.algorithm} {scale}",
                         "stochastic sign in training" if config.stochastic else "")
    if config.activations not in ((), None, []):
        targets = pick_layers(model, config.activations, (), verb="binarize activations",
                              supports=_takes_real_inputs, report=run.report)
        for name, module in targets:
            binarize_input(module)
            run.report.note(f"{name}: inputs binarized (sign)")
        structure.note(model, "binary_input", [{"name": name} for name, _ in targets])


def _takes_real_inputs(name: str, module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear | _ConvNd):
        return None
    return f"{type(module).__name__} inputs cannot be binarized (Linear and ConvNd inputs can)"


@verb(TernaryConfig)
def ternarize(model: nn.Module, config: TernaryConfig, run: Run) -> None:
    """Make the selected layers' weights ternary (TTQ or TWN), in place.

    TTQ adds two trainable scales per layer (``<layer>.parametrizations.weight.0.wp`` / ``wn``),
    which :func:`penjing.fit` trains along with the latent weights; every weight is then one of
    ``{-Wn, 0, +Wp}`` and :func:`penjing.save` stores it as a 3-value codebook. Skips are
    recorded in ``pj.last_report(model)``; the report's ``extra["zeros"]`` holds each layer's
    fraction of zero weights.
    """
    chosen = choose_layers(model, config.layers, config.exclude, config.keep_first_last,
                           "ternarize", LOWBIT_TYPES, run.report)
    thresholds = per_layer(config.threshold, chosen, "TernaryConfig.threshold")
    zeros: dict[str, float] = {}
    for name, module in chosen:
        if name not in thresholds:
            run.report.skip(name, module, "no TernaryConfig.threshold key matches this layer")
            continue
        t = check_threshold(config.algorithm, thresholds[name])
        before = _before(module)
        if config.algorithm == "ttq":
            p = TTQWeight(module.weight.detach(), t)
            rule = f"t={t:g} of max|W|, learned Wp/Wn"
        else:
            p = TWNWeight(t)
            rule = f"{t:g} x mean|W|, alpha = mean above it"
        attach(module, p)
        codes = p.encode(latent(module, p))["codes"]
        zeros[name] = float((codes == 0).float().mean()) if codes.numel() else 0.0
        run.report.touch(name, module, before, f"ternary {config.algorithm} {{-Wn, 0, +Wp}}",
                         f"threshold {rule}; {100 * zeros[name]:.1f}% zeros")
    run.report.extra["zeros"] = zeros


@torch.no_grad()
def latent(module: nn.Module, parametrization: nn.Module) -> torch.Tensor:
    """The tensor ``parametrization`` sees: the original weight passed through the
    parametrizations attached before it (e.g. a pruning mask), detached."""
    x = original(module).detach()
    for p in parametrizations(module):
        if p is parametrization:
            return x
        x = p(x)
    raise ValueError(f"{type(parametrization).__name__} is not attached to this module")


def lowbit_layers(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """``(name, module, parametrization)`` for every binary/ternary layer of ``model``."""
    out = []
    for name, module in model.named_modules():
        for p in parametrizations(module):
            if isinstance(p, LOWBIT_TYPES):
                out.append((name, module, p))
    return out


def ternary_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of zero weights in each ternary layer (TTQ/TWN), by layer name."""
    out = {}
    for name, module, p in lowbit_layers(model):
        if isinstance(p, (TTQWeight, TWNWeight)):
            codes = p.encode(latent(module, p))["codes"]
            out[name] = float((codes == 0).float().mean()) if codes.numel() else 0.0
    return out
