"""Parametrizations: how a method changes the *representation* of a weight.

Pruning (``W = M * V``), weight sharing (``W = C[I]``), fake quantization and ternary /
binary weights are all :mod:`torch.nn.utils.parametrize` parametrizations. They stack in the
order they are attached (prune, then share, then quantize), train with plain autograd and
*bake* into plain tensors with :func:`bake`.

A parametrization may carry a ``bits`` attribute (bits per stored weight value); the
accounting in :mod:`penjing.core.stats` and the codec read it.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize


def attach(module: nn.Module, parametrization: nn.Module, name: str = "weight") -> nn.Module:
    """Attach ``parametrization`` to ``module.<name>`` (on top of any already there)."""
    if not isinstance(getattr(module, name, None), nn.Parameter) and not is_parametrized(module, name):
        raise ValueError(
            f"{type(module).__name__} has no parameter {name!r} to parametrize; "
            "select layers that have one (e.g. Linear, Conv2d)"
        )
    parametrize.register_parametrization(module, name, parametrization)
    return module


def is_parametrized(module: nn.Module, name: str = "weight") -> bool:
    return parametrize.is_parametrized(module, name)


def parametrizations(module: nn.Module, name: str = "weight") -> list[nn.Module]:
    """The parametrizations on ``module.<name>``, in application order (empty if none)."""
    if not parametrize.is_parametrized(module, name):
        return []
    return list(module.parametrizations[name])


def original(module: nn.Module, name: str = "weight"):
    """The underlying trainable tensor (the dense ``V`` under every parametrization)."""
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return getattr(module, name)


def remove(module: nn.Module, kind: type, name: str = "weight") -> None:
    """Remove every parametrization of type ``kind`` from ``module.<name>``, keeping the rest.

    The weight keeps the value of the *original* tensor (the layer forgets ``kind`` but not
    the others): this is how DSD drops its mask and re-densifies.
    """
    kept = [p for p in parametrizations(module, name) if not isinstance(p, kind)]
    if not parametrize.is_parametrized(module, name):
        return
    _own_class(module)
    parametrize.remove_parametrizations(module, name, leave_parametrized=False)
    for p in kept:
        parametrize.register_parametrization(module, name, p)


def _own_class(module: nn.Module) -> None:
    """Give ``module`` a private copy of its generated ``Parametrized*`` class.

    torch's parametrize generates one class per parametrized module, but ``copy.deepcopy``
    shares it between the copies; removing a parametrization deletes a property from that
    class, which would break every other copy. A private clone keeps the removal local.
    """
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


def bake(model: nn.Module) -> nn.Module:
    """Replace every parametrized tensor in ``model`` by its current value (in place)."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            _own_class(module)
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model
