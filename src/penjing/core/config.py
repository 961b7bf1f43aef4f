"""The one config base and the handler registry (torchao's shape).

Every method declares its settings once, as a dataclass deriving from :class:`MethodConfig`,
each field made with :func:`option` (default + help text). From that one declaration come:

* the Python API: ``pj.prune(model, pj.PruneConfig(...))`` or ``pj.apply(model, config)``;
* the recipe step ``- prune: {fields}`` (:meth:`MethodConfig.from_dict`, unknown fields refused);
* the CLI flags of ``penjing prune`` (:func:`penjing.core.cli_config.add_config_flags`).

A method registers the function that applies its config with :func:`verb`, which also builds
the public verb with the one signature every verb has::

    verb(model, config=None, *, data=None, example_inputs=None, forward_fn=None,
         loss_fn=None, metric=None, progress=True, **fields) -> model

The model is changed in place and returned; the verb's :class:`~penjing.core.report.Report`
is kept for :func:`~penjing.core.report.last_report`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass
from typing import Any, ClassVar, TypeVar

from torch import nn

from penjing.core.report import Report, record

C = TypeVar("C", bound="MethodConfig")


def option(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING,
           cli: bool = True, recipe: bool = True, metavar: str | None = None) -> Any:
    """A config field with its help text (used by ``--help`` and the docs).

    ``cli=False`` keeps a field out of the command line (Python objects such as predicates);
    ``recipe=False`` keeps it out of recipe files.
    """
    metadata = {"help": help, "cli": cli, "recipe": recipe, "metavar": metavar}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass
class MethodConfig:
    """Base of every method's config; subclasses are dataclasses of :func:`option` fields.

    ``method`` is the verb's name (``"prune"``); subclasses validate in ``__post_init__`` and
    raise ``ValueError`` naming the field.
    """

    method: ClassVar[str] = ""

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.init]

    @classmethod
    def from_dict(cls: type[C], raw: Mapping[str, Any] | None, where: str = "") -> C:
        """Build the config from plain data (a recipe step); unknown or non-recipe fields are
        errors naming the allowed ones."""
        raw = dict(raw or {})
        allowed = {f.name for f in cls.options() if f.metadata.get("recipe", True)}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ValueError(f"{where}unknown field(s) {unknown} for {cls.__name__}; allowed: "
                             f"{', '.join(sorted(allowed))}")
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in self.options()}


#: config type -> the function applying it: ``handler(model, config, run) -> None``
_HANDLERS: dict[type[MethodConfig], Callable[..., None]] = {}


@dataclass
class Run:
    """What a handler gets besides the model and the config: the data protocol and the report."""

    data: Any = None
    example_inputs: Any = None
    forward_fn: Callable | None = None
    loss_fn: Callable | None = None
    metric: Callable | None = None
    progress: bool = True
    report: Report = dataclasses.field(default_factory=lambda: Report(""))


def registered() -> dict[str, type[MethodConfig]]:
    """Every registered config type by its method name."""
    return {cls.method: cls for cls in _HANDLERS}


def handler_for(config: MethodConfig) -> Callable[..., None]:
    for cls in type(config).__mro__:
        if cls in _HANDLERS:
            return _HANDLERS[cls]
    raise TypeError(f"no penjing method is registered for {type(config).__name__}; pass a config "
                    f"such as {', '.join(sorted(c.__name__ for c in _HANDLERS))}")


def apply(model: nn.Module, config: MethodConfig, *, data: Any = None, example_inputs: Any = None,
          forward_fn: Callable | None = None, loss_fn: Callable | None = None,
          metric: Callable | None = None, progress: bool = True) -> nn.Module:
    """Apply ``config``'s method to ``model`` in place and return the model.

    The layers touched and skipped are recorded in a :class:`Report` (read it with
    ``pj.last_report(model)``); a call that changes no layer warns.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module to change, got {type(model).__name__}")
    handler = handler_for(config)
    run = Run(data, example_inputs, forward_fn, loss_fn, metric, progress, Report(config.method))
    handler(model, config, run)
    record(model, run.report)
    if not run.report.changed:
        warnings.warn(f"penjing.{config.method}: no layer was changed"
                      + (f" ({len(run.report.skipped)} skipped; see pj.last_report(model))"
                         if run.report.skipped else ""), UserWarning, stacklevel=3)
    return model


def coerce(cls: type[C], config: C | None, fields: Mapping[str, Any]) -> C:
    """``config`` itself, or a ``cls`` built from keyword ``fields`` (not both)."""
    if config is None:
        return cls(**fields)
    if fields:
        raise ValueError(f"pass either a {cls.__name__} or keyword fields, not both ({sorted(fields)})")
    if not isinstance(config, cls):
        raise TypeError(f"expected a {cls.__name__}, got {type(config).__name__}")
    return config


def verb(cls: type[C]) -> Callable[[Callable[..., None]], Callable[..., nn.Module]]:
    """Register ``handler(model, config, run)`` for ``cls`` and return the public verb."""
    if not cls.method:
        raise TypeError(f"{cls.__name__}.method must name the verb")

    def wrap(handler: Callable[..., None]) -> Callable[..., nn.Module]:
        _HANDLERS[cls] = handler

        def public(model: nn.Module, config: C | None = None, *, data: Any = None,
                   example_inputs: Any = None, forward_fn: Callable | None = None,
                   loss_fn: Callable | None = None, metric: Callable | None = None,
                   progress: bool = True, **fields: Any) -> nn.Module:
            return apply(model, coerce(cls, config, fields), data=data,
                         example_inputs=example_inputs, forward_fn=forward_fn, loss_fn=loss_fn,
                         metric=metric, progress=progress)

        public.__name__ = public.__qualname__ = cls.method
        public.__doc__ = handler.__doc__
        public.__module__ = handler.__module__
        public.__wrapped_handler__ = handler  # type: ignore[attr-defined]
        return public

    return wrap
