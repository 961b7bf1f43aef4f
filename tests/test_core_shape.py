"""The shared shape of every verb: config base + registry, the one override rule, layer picking,
the Report, generated CLI flags."""

from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass
from typing import ClassVar, Literal

import pytest
import torch
from torch import nn

from penjing.core.cli_config import add_config_flags, config_flags, config_from_args
from penjing.core.config import MethodConfig, Run, apply, option, registered, verb
from penjing.core.layers import pick_layers, weight_layout, weighted_layers
from penjing.core.override import per_layer
from penjing.core.report import Report, last_report


@dataclass
class _Scale(MethodConfig):
    """Multiplies the selected layers' weights (a test method)."""

    method: ClassVar[str] = "scale_test"
    factor: float | dict = option(2.0, "factor per layer")
    mode: Literal["mul", "add"] = option("mul", "how to apply it")
    verbose: bool = option(False, "say more")
    layers: object = option(None, "which layers", cli=False)
    exclude: object = option((), "layers to leave", cli=False)

    def __post_init__(self) -> None:
        for value in (self.factor.values() if isinstance(self.factor, dict) else [self.factor]):
            if not value > 0:
                raise ValueError(f"_Scale.factor must be > 0, got {value}")


@verb(_Scale)
def scale_test(model: nn.Module, config: _Scale, run: Run) -> None:
    """Scale weights (test verb)."""
    layers = pick_layers(model, config.layers, config.exclude, verb="scale_test",
                         supports=lambda n, m: None if isinstance(m, nn.Linear) else "not a Linear",
                         report=run.report)
    factors = per_layer(config.factor, layers, "_Scale.factor")
    with torch.no_grad():
        for name, module in layers:
            if name in factors:
                module.weight.mul_(factors[name])
                run.report.touch(name, module, "w", f"{factors[name]} w")
            else:
                run.report.skip(name, module, "no factor key matches")


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.LayerNorm(4),
                         nn.Linear(4, 2), nn.Embedding(5, 4))


def test_override_first_match_wins_and_roles():
    layers = [(n, m) for n, m in _net().named_modules() if isinstance(m, nn.Linear)]
    assert per_layer({"0": 6, "*": 4}, layers, "x") == {"0": 6, "2": 4, "4": 4}
    assert per_layer({"*": 4, "0": 6}, layers, "x") == {"0": 4, "2": 4, "4": 4}  # first wins
    assert per_layer({"last": 1, "first": 2}, layers, "x") == {"4": 1, "0": 2}
    assert per_layer(3, layers, "x") == {"0": 3, "2": 3, "4": 3}
    assert per_layer({"Linear": 7}, layers, "x") == {"0": 7, "2": 7, "4": 7}
    assert per_layer({"fc": 7, "conv": 1}, layers + [("c", nn.Conv2d(1, 1, 1))], "x")["c"] == 1


def test_override_key_matching_nothing_is_an_error_naming_it():
    layers = [(n, m) for n, m in _net().named_modules() if isinstance(m, nn.Linear)]
    with pytest.raises(ValueError, match=r"^ShareConfig.bits: key 'fc9' matches no layer; the layers are 0, 2, 4$"):
        per_layer({"fc9": 5, "*": 4}, layers, "ShareConfig.bits")
    with pytest.raises(ValueError, match="empty mapping"):
        per_layer({}, layers, "x")


def test_verb_shape_report_and_registry():
    model = _net()
    before = model[0].weight.detach().clone()
    out = scale_test(model, factor={"0": 3.0, "2": 2.0})
    assert out is model
    assert torch.equal(model[0].weight, 3 * before)
    report = last_report(model)
    assert [c.name for c in report.touched] == ["0", "2"]
    assert [(s.name, s.reason) for s in report.skipped] == [("5", "not a Linear"),
                                                            ("4", "no factor key matches")]
    assert all(len(line) <= 80 for line in str(report).splitlines())
    assert registered()["scale_test"] is _Scale
    params = inspect.signature(scale_test).parameters
    assert list(params)[:2] == ["model", "config"]
    assert all(params[k].kind is inspect.Parameter.KEYWORD_ONLY
               for k in ("data", "example_inputs", "forward_fn", "loss_fn", "metric", "progress"))
    # pj.apply dispatches on the config type to the same handler
    apply(model, _Scale(factor=0.5, layers="4"))
    assert [c.name for c in last_report(model).touched] == ["4"]


def test_explicit_selection_errors_and_default_skips():
    model = _net()
    with pytest.raises(ValueError, match=r"^scale_test: layers entry 'fc9' matches no layer with weights"):
        scale_test(model, layers=["0", "fc9"])
    with pytest.raises(ValueError, match=r"^scale_test: layer 5 \(Embedding\) was selected but not a Linear"):
        scale_test(model, layers=["0", "5"])
    with pytest.raises(ValueError, match=r"^scale_test: exclude entry 'x' matches no layer"):
        scale_test(model, exclude="x")
    with pytest.raises(ValueError, match=r"^scale_test: no layer to act on"):
        scale_test(nn.Sequential(nn.Embedding(3, 2)))
    with pytest.raises(ValueError, match="no layer with a weight matrix"):
        scale_test(nn.Sequential(nn.ReLU(), nn.LayerNorm(3)))
    with pytest.raises(ValueError, match="either a _Scale or keyword fields"):
        scale_test(model, _Scale(), factor=2.0)


@dataclass
class _Nothing(MethodConfig):
    method: ClassVar[str] = "nothing_test"


@verb(_Nothing)
def nothing_test(model: nn.Module, config: _Nothing, run: Run) -> None:
    for name, module in weighted_layers(model):
        run.report.skip(name, module, "nothing to do")


def test_a_verb_that_changes_nothing_warns():
    model = _net()
    with pytest.warns(UserWarning, match=r"^penjing.nothing_test: no layer was changed \(4 skipped; "
                      r"see pj.last_report\(model\)\)$"):
        assert nothing_test(model) is model
    assert len(last_report(model).skipped) == 4


def test_last_report_before_any_verb():
    with pytest.raises(LookupError, match="no penjing verb has run on this model"):
        last_report(nn.Linear(2, 2))


def test_weighted_layers_and_layouts():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.ConvTranspose2d(4, 6, 3),
                          nn.Embedding(5, 3), nn.MultiheadAttention(4, 2), nn.BatchNorm2d(6))
    kinds = [type(m).__name__ for _, m in weighted_layers(model)]
    assert kinds == ["Linear", "ConvTranspose2d", "Embedding", "MultiheadAttention",
                     "NonDynamicallyQuantizableLinear"]
    assert weight_layout(model[2]).out_axis == 1 and weight_layout(model[2]).in_axis == 0
    assert weight_layout(model[0]).out_axis == 0
    with pytest.raises(TypeError):
        weight_layout(model[1])


def test_cli_flags_come_from_the_config():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, _Scale)
    assert config_flags(_Scale) == ["--factor", "--mode", "--verbose"]
    args = parser.parse_args(["--factor", "0=2,last=0.5", "--mode", "add", "--verbose"])
    config = config_from_args(_Scale, args)
    assert config == _Scale(factor={"0": 2, "last": 0.5}, mode="add", verbose=True)
    assert config_from_args(_Scale, parser.parse_args([])) == _Scale()
    text = parser.format_help()
    assert "factor per layer (default: 2.0)" in text and "{mul,add}" in text
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "bogus"])


def test_config_from_dict_refuses_unknown_fields():
    assert _Scale.from_dict({"factor": 3}) == _Scale(factor=3)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['fcator'\] for _Scale; allowed:"):
        _Scale.from_dict({"fcator": 3})
    with pytest.raises(ValueError, match="_Scale.factor must be > 0, got -1"):
        _Scale.from_dict({"factor": -1})


def test_report_markdown_and_long_names_fit():
    report = Report("prune")
    report.touch("encoder.layers.encoder_layer_11.self_attention.out_proj", "Linear",
                 "fp32 dense 768x768", "80.0% zeros (unstructured)")
    report.skip("heads.head", "Linear", "its outputs are the model's outputs")
    assert all(len(line) <= 80 for line in report.render(80).splitlines())
    assert "| heads.head | Linear | its outputs are the model's outputs |" in report.to_markdown()
