"""The CLI flags and the recipe fields of every method come from its one config class."""

from __future__ import annotations

import argparse

import pytest

import penjing  # noqa: F401  (binds every verb, registering its config)
from penjing.cli import build_parser
from penjing.core.cli_config import config_flags
from penjing.core.config import registered
from penjing.recipe.schema import step_fields, step_module, step_names

VERBS = {"prune", "share", "quantize", "lowrank", "ternarize", "binarize", "winograd"}
#: config flags a command spells its own way, on purpose (the command's flag -> the field)
ALIASES = {("quantize", "--int8"): "--no-convert"}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_method_verb_is_registered():
    assert VERBS <= set(registered())


@pytest.mark.parametrize("method", sorted(VERBS))
def test_command_flags_are_the_config_fields(method):
    commands = _subparsers()
    if method not in commands:
        pytest.skip(f"no `penjing {method}` command (the method runs from recipes)")
    cls = registered()[method]
    options = {s: a for a in commands[method]._actions for s in a.option_strings}
    for flag in config_flags(cls):
        if (method, flag) in ALIASES:
            assert ALIASES[method, flag] in options
            continue
        assert flag in options, f"penjing {method} lacks {flag} of {cls.__name__}"
        field = next(f for f in cls.options() if f"--{f.name.replace('_', '-')}" == flag)
        assert field.metadata.get("help"), f"{cls.__name__}.{field.name} has no help text"
        assert "(default:" in options[flag].help, f"{flag} does not show its default"


@pytest.mark.parametrize("method", sorted(VERBS))
def test_recipe_step_fields_are_the_config_fields(method):
    if method not in step_names():
        pytest.skip(f"no recipe step {method}")
    module = step_module(method)
    cls = registered()[method]
    assert module.CONFIG is cls
    recipe_fields = {f.name for f in cls.options() if f.metadata.get("recipe", True)}
    assert recipe_fields <= set(step_fields(module))
