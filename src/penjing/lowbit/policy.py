"""Which layers become binary/ternary: the selector, minus the first and last layers.

The papers (BinaryConnect, XNOR-Net, TWN, TTQ) keep the first and the last layer in full
precision: the first sees raw pixels through few weights, the last produces the logits, and
both are a tiny share of the weights. penjing does the same unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from penjing.core.params import parametrizations
from penjing.core.select import WEIGHTED_TYPES, LayerSelector, select

#: The layer types whose ``weight`` can be binarized/ternarized.
SUPPORTED = WEIGHTED_TYPES
_GLOB = set("*?[")


def _explicit_names(layers: LayerSelector) -> list[str]:
    """The plain module names (no glob, not a type name) a selector spells out."""
    items = [layers] if isinstance(layers, str) else list(layers) if isinstance(layers, Sequence) else []
    return [s for s in items if isinstance(s, str) and not (_GLOB & set(s)) and not s.startswith("nn.")
            and not s[:1].isupper()]


def pick_layers(model: nn.Module, layers: LayerSelector, exclude: LayerSelector,
                keep_first_last: bool, verb: str, marker: tuple[type, ...]) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs to convert, with clear errors for what cannot be.

    A layer named explicitly that has no weight (``"pool"``) or does not exist is an error;
    layers without weights matched by a glob, a type or a predicate are skipped (a glob like
    ``"features.*"`` naturally matches ReLUs and poolings too).
    """
    modules = dict(model.named_modules())
    for name in _explicit_names(layers):
        if name not in modules:
            raise ValueError(f"cannot {verb} layer {name!r}: the model has no such layer")
        if not isinstance(modules[name], SUPPORTED):
            raise ValueError(
                f"cannot {verb} layer {name!r} ({type(modules[name]).__name__}): it has no weight "
                f"to {verb}; {verb} acts on {', '.join(t.__name__ for t in SUPPORTED)} layers"
            )
    weighted = [n for n, _ in select(model, None, types=SUPPORTED)]
    edges = {weighted[0], weighted[-1]} if keep_first_last and weighted else set()
    chosen = [(n, m) for n, m in select(model, layers, exclude=exclude, types=SUPPORTED) if n not in edges]
    for name, module in chosen:
        if any(isinstance(p, marker) for p in parametrizations(module)):
            raise ValueError(f"layer {name!r} is already binary/ternary; {verb} it once")
    if not chosen:
        hint = (" (the first and last weighted layers stay full precision; pass "
                "keep_first_last=False to include them)") if edges else ""
        raise ValueError(f"no layers to {verb}: the selector picked no Linear/Conv layer{hint}")
    return chosen
