"""CLI flags generated from a config class, so ``penjing <verb> --help`` and the Python config
cannot drift: one flag per :func:`~penjing.core.config.option` field, with its help text and
its default.

Scalar fields take their type (``--rounds 6``), ``Literal`` fields their choices, booleans
``--flag/--no-flag``. Every other field (per-layer mappings, selectors, tuples) takes YAML:
``--bits 5``, ``--bits '{Linear: 5, conv: 8}'``, ``--sparsity 'fc*=0.9,last=0.7'`` (the
``key=value,...`` short form is accepted for mappings too).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal

import yaml

from penjing.core.config import MethodConfig


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _yaml_value(text: str) -> Any:
    """A flag value as data: YAML, or the ``key=value,key=value`` shorthand for a mapping."""
    stripped = text.strip()
    if "=" in stripped and not stripped.startswith(("{", "[")):
        out: dict[str, Any] = {}
        for item in stripped.split(","):
            if not item.strip():
                continue
            key, sep, value = item.partition("=")
            if not sep:
                raise argparse.ArgumentTypeError(f"expected key=value pairs, got {item!r} in {text!r}")
            out[key.strip()] = yaml.safe_load(value)
        return out
    try:
        return yaml.safe_load(stripped)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {text!r}: {exc}") from None


def _scalar(kind: type) -> Any:
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None

    parse.__name__ = kind.__name__
    return parse


def _optional_inner(hint: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _kwargs_for(field: dataclasses.Field, hint: Any) -> dict[str, Any]:
    help_text = field.metadata.get("help", "")
    default = field.default if field.default is not dataclasses.MISSING else (
        field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
    shown = "%(default)s" if not isinstance(default, dict | list | tuple) or default else "none"
    kwargs: dict[str, Any] = {"dest": field.name, "default": default,
                              "help": f"{help_text} (default: {shown})".strip()}
    if field.metadata.get("metavar"):
        kwargs["metavar"] = field.metadata["metavar"]
    inner = _optional_inner(hint)
    if inner is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(inner) is Literal:
        kwargs["choices"] = list(typing.get_args(inner))
        kwargs["type"] = type(kwargs["choices"][0])
    elif inner in (int, float, str):
        kwargs["type"] = _scalar(inner)
    else:
        kwargs["type"] = _yaml_value
        kwargs.setdefault("metavar", "YAML")
    return kwargs


def add_config_flags(parser: argparse.ArgumentParser, cls: type[MethodConfig],
                     skip: tuple[str, ...] = (), title: str | None = None) -> argparse._ArgumentGroup:
    """Add one flag per CLI field of ``cls`` to ``parser`` (in an argument group named after
    it, or ``title``)."""
    group = parser.add_argument_group(title or f"{cls.__name__} (penjing.{cls.__name__})")
    hints = typing.get_type_hints(cls)
    for field in cls.options():
        if not field.metadata.get("cli", True) or field.name in skip:
            continue
        group.add_argument(flag_name(field.name), **_kwargs_for(field, hints.get(field.name, Any)))
    return group


def config_flags(cls: type[MethodConfig], skip: tuple[str, ...] = ()) -> list[str]:
    """The flags :func:`add_config_flags` adds for ``cls``."""
    return [flag_name(f.name) for f in cls.options()
            if f.metadata.get("cli", True) and f.name not in skip]


def config_from_args(cls: type[MethodConfig], args: argparse.Namespace, **fixed: Any):
    """Build ``cls`` from the parsed flags (``fixed`` fields override them)."""
    values = {f.name: getattr(args, f.name) for f in cls.options()
              if f.metadata.get("cli", True) and hasattr(args, f.name)}
    values.update(fixed)
    return cls(**values)
