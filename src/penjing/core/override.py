"""The one override rule for every per-layer value of every config.

A per-layer value is either one value for every layer, or an ordered mapping
``selector -> value`` where **the first key that matches a layer wins**. A key is what
:func:`penjing.core.select.select` accepts for one entry (a name glob ``"encoder.*"``, a type
name ``"Linear"``, a type, a predicate ``f(name, module)``) or a role:

* ``"conv"`` any ConvNd / ConvTransposeNd, ``"fc"`` any Linear, ``"embedding"`` any
  Embedding / EmbeddingBag;
* ``"first"`` / ``"last"``: the first / last of the layers the verb acts on, in the order the
  model registers them (usually the input and output layers);
* ``"*"`` every layer.

A key that matches none of the layers is an error naming the key and the layers, so a typo
never passes in silence. Layers no key matches get ``default`` (or are left out, and the verb
records them as skipped).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from torch import nn
from torch.nn.modules.conv import _ConvNd

from penjing.core.select import _matches

T = TypeVar("T")
_MISSING: Any = object()

_ROLES = {
    "conv": lambda m: isinstance(m, _ConvNd),
    "fc": lambda m: isinstance(m, nn.Linear),
    "embedding": lambda m: isinstance(m, nn.Embedding | nn.EmbeddingBag),
}


def is_per_layer(value: object) -> bool:
    """True when ``value`` is a ``selector -> value`` mapping rather than one value."""
    return isinstance(value, Mapping)


def key_matches(key: Any, name: str, module: nn.Module, index: int, count: int) -> bool:
    """Does override ``key`` pick the layer ``name`` (the ``index``-th of ``count`` layers)?"""
    if isinstance(key, str):
        if key == "*":
            return True
        if key == "first":
            return index == 0
        if key == "last":
            return index == count - 1
        if key in _ROLES:
            return _ROLES[key](module)
    return _matches(key, name, module)


def per_layer(value: T | Mapping[Any, T], layers: Sequence[tuple[str, nn.Module]], what: str,
              *, default: T = _MISSING) -> dict[str, T]:
    """Resolve ``value`` for each ``(name, module)`` in ``layers`` by the one override rule.

    Returns ``{layer name: value}``; layers that no key matches get ``default``, or are left
    out of the result when no default is given. ``what`` names the setting in errors
    (``"ShareConfig.bits"``).
    """
    if not is_per_layer(value):
        return {name: value for name, _ in layers}
    if not value:
        raise ValueError(f"{what} is an empty mapping: give one value, or selector -> value pairs")
    used: set[int] = set()
    resolved: dict[str, T] = {}
    keys = list(value.items())
    for index, (name, module) in enumerate(layers):
        for k, (key, v) in enumerate(keys):
            if key_matches(key, name, module, index, len(layers)):
                resolved[name] = v
                used.add(k)
                break
        else:
            if default is not _MISSING:
                resolved[name] = default
    unused = [key for k, (key, _) in enumerate(keys) if k not in used]
    for key in unused:
        # A key shadowed by an earlier one still matches some layer: that is the user's
        # ordering, not a typo. Only a key that matches no layer at all is an error.
        if not any(key_matches(key, n, m, i, len(layers)) for i, (n, m) in enumerate(layers)):
            raise ValueError(f"{what}: key {key!r} matches no layer; the layers are "
                             f"{_names(layers)}")
    return resolved


def _names(layers: Sequence[tuple[str, nn.Module]], limit: int = 12) -> str:
    names = [n or "(root)" for n, _ in layers]
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
