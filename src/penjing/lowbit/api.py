"""The verbs: :func:`binarize` and :func:`ternarize` (model in, model out, in place)."""

from __future__ import annotations

import torch
from torch import nn

from penjing.core.params import attach, original, parametrizations
from penjing.core.select import select
from penjing.lowbit.binary import BinaryWeight, binarize_input
from penjing.lowbit.config import BinaryConfig, TernaryConfig
from penjing.lowbit.policy import SUPPORTED, pick_layers
from penjing.lowbit.ternary import TTQWeight, TWNWeight

#: Every lowbit parametrization type (a layer carries at most one of them).
LOWBIT_TYPES = (BinaryWeight, TWNWeight, TTQWeight)


def binarize(model: nn.Module, config: BinaryConfig | None = None) -> nn.Module:
    """Make the selected layers' weights binary (BinaryConnect / XNOR), in place.

    Each selected layer gets a :class:`BinaryWeight` parametrization: the latent real weights
    stay trainable and :func:`penjing.fit` trains them through the straight-through
    estimator; :func:`penjing.bake` freezes ``alpha * sign(V)`` into plain tensors.
    """
    config = config or BinaryConfig()
    for _, module in pick_layers(model, config.layers, config.exclude, config.keep_first_last,
                                 "binarize", LOWBIT_TYPES):
        attach(module, BinaryWeight(config.scaling, config.stochastic, config.clip))
        if config.normalize:
            with torch.no_grad():
                v = original(module)
                peak = v.abs().max()
                if peak > 0:  # an all-zero layer stays zero (and sign(0) = +1)
                    v.div_(peak)
    if config.activations not in ((), None, []):
        targets = list(select(model, config.activations, types=SUPPORTED))
        if not targets:
            raise ValueError("activations: the selector picked no Linear/Conv layer to feed binary inputs")
        for _, module in targets:
            binarize_input(module)
    return model


def ternarize(model: nn.Module, config: TernaryConfig | None = None) -> nn.Module:
    """Make the selected layers' weights ternary (TTQ or TWN), in place.

    TTQ adds two trainable scales per layer (``<layer>.parametrizations.weight.0.wp`` / ``wn``),
    which :func:`penjing.fit` trains along with the latent weights.
    """
    config = config or TernaryConfig()
    for _, module in pick_layers(model, config.layers, config.exclude, config.keep_first_last,
                                 "ternarize", LOWBIT_TYPES):
        if config.method == "ttq":
            attach(module, TTQWeight(module.weight.detach(), config.threshold))
        else:
            attach(module, TWNWeight(config.threshold))
    return model


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
