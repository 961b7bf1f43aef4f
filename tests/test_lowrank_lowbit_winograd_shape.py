"""The verb shape for lowrank, binarize, ternarize and winograd: CLI flags and recipe fields
come from the one config class, verbs have the one signature and return the model."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from torch import nn

import penjing as pj
from penjing.cli import build_parser
from penjing.core.cli_config import config_flags
from penjing.core.config import apply, handler_for
from penjing.core.report import last_report
from penjing.recipe.schema import Recipe, step_module

CASES = [("lowrank", pj.LowRankConfig), ("binarize", pj.BinaryConfig),
         ("ternarize", pj.TernaryConfig), ("winograd", pj.WinogradConfig)]


def _subparser(command: str):
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices[command]


@pytest.mark.parametrize(("command", "cls"), CASES)
def test_cli_flags_and_recipe_fields_are_the_config_fields(command, cls):
    flags = {opt for a in _subparser(command)._actions for opt in a.option_strings}
    assert set(config_flags(cls)) <= flags
    declared = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in cls.options() if f.metadata.get("cli", True)}
    parsed = _subparser(command).parse_args([])
    assert {name: getattr(parsed, name) for name in declared} == declared  # same defaults
    module = step_module(command)
    assert module.CONFIG is cls
    recipe = Recipe.from_dict({"steps": [{command: cls().to_dict()}]})
    assert recipe.steps[0].params == cls()


@pytest.mark.parametrize(("command", "cls"), CASES)
def test_verbs_have_the_one_signature_and_dispatch_through_apply(command, cls):
    verb = getattr(pj, command)
    params = inspect.signature(verb).parameters
    assert list(params)[:2] == ["model", "config"]
    for name in ("data", "example_inputs", "forward_fn", "loss_fn", "metric", "progress"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert cls.method == command and handler_for(cls()) is verb.__wrapped_handler__
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1),
                          nn.Flatten(), nn.Linear(4 * 64, 8), nn.Linear(8, 3))
    config = cls(keep_first_last=False) if "keep_first_last" in cls.__dataclass_fields__ else cls()
    if command == "winograd":
        config = cls(measure=False)
    assert apply(model, config) is model
    assert last_report(model).verb == command and last_report(model).touched


def test_a_config_and_keyword_fields_are_not_both_accepted():
    with pytest.raises(ValueError, match=r"pass either a LowRankConfig or keyword fields, not both"):
        pj.lowrank(nn.Linear(4, 4), pj.LowRankConfig(), rank=2)
    with pytest.raises(TypeError, match="expected a TernaryConfig, got BinaryConfig"):
        pj.ternarize(nn.Linear(4, 4), pj.BinaryConfig())


@pytest.mark.parametrize("training", [True, False])
def test_verbs_that_run_the_model_keep_its_train_eval_mode(training):
    import torch
    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Dropout(0.5), nn.Flatten(),
                          nn.Linear(4 * 64, 8), nn.Linear(8, 3)).train(training)
    x = torch.randn(16, 1, 8, 8)
    data = TensorDataset(x, torch.randint(0, 3, (16,)))
    pj.lowrank(model, pj.LowRankConfig(params=0.6, sensitivity=True, sensitivity_samples=16), data=data)
    assert all(m.training is training for m in model.modules())
    pj.winograd(model, pj.WinogradConfig(measure=False), example_inputs=x)  # runs the model
    assert all(m.training is training for m in model.modules())
