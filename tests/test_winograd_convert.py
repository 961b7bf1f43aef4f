"""penjing.winograd_conv on whole models: what is swapped, what is skipped and why, same predictions."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import penjing
from penjing.winograd_conv import (
    WinogradConfig,
    WinogradConv2d,
    choose_tile_by_cost,
    conv_multiplications,
    layer_multiplications,
)

torch.set_num_threads(1)


def convert(model, config=None, example=None):
    """``pj.winograd`` and the per-layer plan it records."""
    from penjing.core.report import last_report

    penjing.winograd(model, config, example_inputs=example)
    return last_report(model).extra["plan"]


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.c = nn.Conv2d(8, 8, 1)
        self.d = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.e = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.f = nn.Conv2d(8, 6, 5, padding=2)
        self.unused = nn.Conv2d(6, 6, 3)

    def forward(self, x):
        return self.f(self.e(self.d(self.c(self.b(self.a(x))))))


def test_swaps_eligible_and_reports_why_others_are_skipped():
    torch.manual_seed(0)
    model = Mixed().eval()
    ref = copy.deepcopy(model)
    x = torch.randn(2, 3, 17, 15)
    report = convert(model, WinogradConfig(measure=False), x)
    reasons = {d.name: d.reason for d in report.layers}
    reasons.update({s.name: s.reason for s in penjing.core.report.last_report(model).skipped})
    assert reasons == {
        "a": "cost model picks F(4) of [2, 4]",
        "b": "Winograd needs stride 1, got stride=(2, 2)",
        "c": "1x1 kernel has nothing to save with Winograd (kernel_size must be >= 2)".join(["a ", ""]),
        "d": "Winograd needs dilation 1, got dilation=(2, 2)",
        "e": "Winograd needs groups=1, got groups=2 (grouped and depthwise convs have no channel GEMM "
             "for the transforms to pay off)",
        "f": "cost model picks F(4) of [2, 4]",
        "unused": "not reached by the example input",
    }
    assert isinstance(model.a, WinogradConv2d) and isinstance(model.f, WinogradConv2d)
    assert type(model.b) is nn.Conv2d and type(model.unused) is nn.Conv2d
    assert [d.name for d in report.converted] == ["a", "f"]
    a = next(d for d in report.layers if d.name == "a")
    assert a.input_shape == (2, 3, 17, 15)
    assert a.direct_mults == conv_multiplications(3, 8, 17, 15, 3, a.m, 2).direct
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)
    text = report.to_markdown()
    assert "| a | 8x3x3x3 | 2x3x17x15 | winograd |" in text and "2 conv(s) converted" in text
    touched = penjing.core.report.last_report(model).touched
    assert [(c.name, c.before, c.after) for c in touched] == [
        ("a", "direct 3x3 conv", "Winograd F(4x4, 3x3)"), ("f", "direct 5x5 conv", "Winograd F(4x4, 5x5)")]
    with pytest.warns(UserWarning, match=r"penjing.winograd: no layer was changed \(6 skipped"):
        convert(model, WinogradConfig(exclude="unused"))  # idempotent
    skipped = {s.name: s.reason for s in penjing.core.report.last_report(model).skipped}
    assert skipped["a"] == "already a WinogradConv2d"


def test_verb_returns_the_model_and_keeps_the_report():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
    out = penjing.winograd(model, WinogradConfig(m=4, kernel_sizes=(3,)))
    assert out is model and all(isinstance(model[i], WinogradConv2d) for i in (0, 2))
    assert model[0].m == 4 and not hasattr(model, "winograd_report")  # no attribute on the user's model
    plan = penjing.core.report.last_report(model).extra["plan"]
    assert [d.reason for d in plan.layers] == ["fixed m"] * 2


def test_measured_choice_keeps_the_fastest_or_leaves_the_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = convert(model, WinogradConfig(reps=3), torch.randn(1, 16, 12, 12))
    (d,) = report.layers
    assert set(d.times_ms) == {"direct", "2", "4"}
    if d.converted:  # which one wins depends on the machine; the decision must follow the times
        assert d.times_ms[str(d.m)] <= d.times_ms["direct"]
        assert d.reason.startswith("measured ") and not caught
    else:  # the only layer stayed direct: the verb says nothing changed
        assert d.reason.startswith("direct conv faster on this shape")
        assert [str(w.message) for w in caught] == [
            "penjing.winograd: no layer was changed (1 skipped; see pj.last_report(model))"]


def test_layer_selection_and_exclusion():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 3))
    convert(model, WinogradConfig(exclude="0"))
    assert type(model[0]) is nn.Conv2d and isinstance(model[1], WinogradConv2d)


@pytest.mark.parametrize("kwargs, message", [
    (dict(m=0), "WinogradConfig.m must be an integer >= 1 (an output tile size), got 0"),
    (dict(tiles=()), "WinogradConfig.tiles must name at least one output tile size, e.g. (2, 4)"),
    (dict(tiles="2,x"), "WinogradConfig.tiles takes integers such as 2,4; got '2,x'"),
    (dict(kernel_sizes=(1,)), "WinogradConfig.kernel_sizes must be integers >= 2, got (1,)"),
    (dict(reps=0), "WinogradConfig.reps must be an int >= 1, got 0"),
])
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError) as info:
        WinogradConfig(**kwargs)
    assert str(info.value) == message


def test_cost_model_prefers_small_tiles_when_the_filter_dominates():
    # 512 channels at 7x7, batch 1: U is 36 * 512^2 floats for F(4): F(2) reads less.
    assert choose_tile_by_cost(512, 512, 7, 7, 3, batch=1) == 2
    # 64 channels at 56x56: plenty of tiles, F(4)'s 4x fewer multiplications win.
    assert choose_tile_by_cost(64, 64, 56, 56, 3, batch=1) == 4


def test_accounting_matches_the_per_tile_counts():
    f2 = conv_multiplications(64, 64, 56, 56, 3, m=2)
    assert f2.tiles == 28 * 28 and f2.direct / f2.elementwise == pytest.approx(36 / 16)
    f4 = conv_multiplications(64, 64, 56, 56, 3, m=4)
    assert f4.direct / f4.elementwise == pytest.approx(144 / 36)
    assert f4.input_transform > 0 and 3.5 < f4.reduction < 4
    odd = conv_multiplications(8, 8, 7, 7, 3, m=4)  # 7x7 needs 2x2 tiles of 4x4: overhang counted
    assert odd.tiles == 4 and odd.elementwise == 4 * 8 * 8 * 36


def test_layer_multiplications_for_the_cost_model():
    conv = nn.Conv2d(64, 64, 3, padding=1)
    assert layer_multiplications(conv, (1, 64, 56, 56), m=2).direct == 64 * 64 * 9 * 56 * 56
    wconv = WinogradConv2d.from_conv(conv, 4)
    assert layer_multiplications(wconv, (2, 64, 56, 56)) == conv_multiplications(64, 64, 56, 56, 3, 4, 2)
    with pytest.raises(ValueError, match="defined for stride-1, dilation-1, groups=1 convs"):
        layer_multiplications(nn.Conv2d(4, 4, 3, stride=2), (1, 4, 8, 8))


@pytest.fixture(scope="module")
def digits_resnet():
    from penjing.data import digits
    from penjing.models import get_model
    from penjing.train import fit

    train, test = digits()
    torch.manual_seed(0)
    model = get_model("resnet")
    fit(model, train, epochs=2, lr=2e-3, seed=0, progress=False)
    return model.eval(), train, test


def test_converted_resnet_gives_identical_predictions_on_digits(digits_resnet):
    from penjing.train import evaluate

    model, train, test = digits_resnet
    converted = copy.deepcopy(model)
    report = convert(converted, WinogradConfig(measure=False), train.tensors[0][:16])
    assert len(report.converted) == 5  # stem + 4 stride-1 3x3 convs; stride-2 and 1x1 skipped
    x = test.tensors[0]
    with torch.no_grad():
        before, after = model(x), converted(x)
    assert torch.equal(before.argmax(1), after.argmax(1))
    assert evaluate(converted, test) == evaluate(model, test) > 0.85


def test_converted_resnet_gradients_match(digits_resnet):
    model, train, _ = digits_resnet
    ref, win = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    convert(win, WinogradConfig(m=4))
    x, y = train.tensors[0][:32], train.tensors[1][:32]
    for net in (ref, win):
        nn.functional.cross_entropy(net(x), y).backward()
    for (name, p), (_, q) in zip(ref.named_parameters(), win.named_parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_cli_prints_table_and_unchanged_accuracy(tmp_path, capsys):
    from penjing.cli import main
    from penjing.models import get_model

    torch.manual_seed(0)
    weights = tmp_path / "resnet.pt"
    torch.save(get_model("resnet").state_dict(), weights)
    assert main(["winograd", "--model", "resnet", "--weights", str(weights), "--m", "4", "--no-measure",
                 "--batch", "8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "layers.1.conv1" in out and "Winograd needs stride 1, got stride=(2, 2)" in out
    assert "5 conv(s) converted to Winograd, 0 eligible left direct" in out
    assert "skipped fc (Linear): Linear is not an nn.Conv2d (Winograd computes 2-D convolutions)" in out
    assert "identical predictions on 100.00% of 450 images" in out
    assert main(["winograd", "--model", "resnet", "--weights", str(weights), "--batch", "0"]) == 2
    assert "penjing winograd: error: --batch must be >= 1, got 0" in capsys.readouterr().err


def test_recipe_step(tmp_path):
    from penjing.data import digits
    from penjing.recipe.context import RecipeContext
    from penjing.recipe.schema import Recipe, RecipeError
    from penjing.recipe.steps import winograd as step

    recipe = Recipe.from_dict({"steps": [{"winograd": {"tiles": [2, 4], "measure": False, "batch": 8}}]})
    params, options = recipe.steps[0].params, recipe.steps[0].options
    assert options.batch == 8
    train, test = digits()
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(256, 10))
    ctx = RecipeContext(train=train, test=test, out_dir=tmp_path, progress=False, echo=False)
    step.run(model, params, options, ctx)
    assert isinstance(model[0], WinogradConv2d)
    assert "## Winograd convolution" in ctx.artifacts["sections"][0]
    with pytest.raises(RecipeError, match="WinogradConfig.tiles must name at least one output tile size"):
        Recipe.from_dict({"steps": [{"winograd": {"tiles": []}}]})
    with pytest.raises(RecipeError, match=r"WinogradConfig.m must be an integer >= 1 \(an output tile size\), got 0"):
        Recipe.from_dict({"steps": [{"winograd": {"m": 0}}]})
    with pytest.raises(RecipeError, match=r"unknown field\(s\) \['example_input'\] for WinogradConfig"):
        Recipe.from_dict({"steps": [{"winograd": {"example_input": 1}}]})
