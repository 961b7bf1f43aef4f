"""The one way to walk a model and swap its modules.

Every method picks its layers with :func:`select` and replaces modules with :func:`swap`.
A selector is any of:

* ``None`` -- every module with a weight of a default type (Linear, Conv*);
* a string glob over module names (``"features.*"``); ``"*.weight"`` style patterns that
  name a parameter are matched against ``"<module>.weight"`` too;
* a module type (``nn.Linear``) or a tuple of types; the type's name as a string also works
  (``"Linear"``);
* a predicate ``f(name, module) -> bool``;
* a list of the above (a module is selected when any entry selects it).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Sequence

from torch import nn

Predicate = Callable[[str, nn.Module], bool]
LayerSelector = None | str | type | tuple | Predicate | Sequence  # see the module docstring

#: Layers with a learnable ``weight`` that the methods act on unless told otherwise.
WEIGHTED_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose2d,
)


def type_name(module: nn.Module) -> str:
    """The class name a user wrote (``Linear``), also for a parametrized module, whose class
    torch replaces by a generated ``ParametrizedLinear`` subclass."""
    cls = type(module)
    if getattr(module, "parametrizations", None) is not None and cls.__name__.startswith("Parametrized"):
        cls = cls.__bases__[0]
    return cls.__name__


def _direct_tensors(module: nn.Module) -> list[str]:
    names = [n for n, _ in module.named_parameters(recurse=False)]
    parametrized = getattr(module, "parametrizations", None)
    if parametrized is not None:
        names += list(parametrized.keys())
        names = [n for n in names if not n.startswith("parametrizations.")]
    return names


def _matches(selector: LayerSelector, name: str, module: nn.Module) -> bool:
    if selector is None:
        return isinstance(module, WEIGHTED_TYPES)
    if isinstance(selector, str):
        if selector in {type_name(module), f"nn.{type_name(module)}"}:
            return True
        if fnmatch.fnmatchcase(name, selector):
            return True
        # "*.weight"-style patterns name a parameter: match modules that hold one directly.
        return any(fnmatch.fnmatchcase(f"{name}.{p}" if name else p, selector) for p in _direct_tensors(module))
    if isinstance(selector, type):
        return isinstance(module, selector)
    if isinstance(selector, tuple) and all(isinstance(s, type) for s in selector):
        return isinstance(module, selector)
    if callable(selector):
        return bool(selector(name, module))
    if isinstance(selector, Sequence):
        return any(_matches(s, name, module) for s in selector)
    raise TypeError(
        f"cannot select layers with {selector!r}: use a name glob, a module type, "
        "a predicate f(name, module) -> bool, or a list of these"
    )


def select(
    model: nn.Module,
    layers: LayerSelector = None,
    *,
    exclude: LayerSelector = (),
    types: tuple[type[nn.Module], ...] | None = None,
) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(name, module)`` for the modules of ``model`` picked by ``layers``.

    ``types`` narrows the result to modules of those types (a method passes the layer types
    it supports); ``exclude`` removes modules picked by another selector. The root module
    itself (name ``""``) is only returned when it alone matches.
    """
    excluded = exclude if exclude != () else None
    for name, module in list(model.named_modules()):
        if types is not None and not isinstance(module, types):
            continue
        if not _matches(layers, name, module):
            continue
        if excluded is not None and _matches(excluded, name, module):
            continue
        yield name, module


def get_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """Return ``(parent_module, attribute_name)`` for the dotted module ``name``."""
    if not name:
        raise ValueError("cannot swap the root module; wrap it instead")
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, child


def swap(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Replace the submodule called ``name`` by ``new`` in place; return the old module.

    Works for attributes, ``nn.Sequential`` / ``nn.ModuleList`` items and ``nn.ModuleDict``
    entries alike because all of them are registered children.
    """
    parent, child = get_parent(model, name)
    old = parent.get_submodule(child)
    old_training = old.training
    new.train(old_training)
    setattr(parent, child, new)
    return old
