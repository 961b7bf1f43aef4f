"""The measured tile choice, driven by a deterministic clock: the decision must follow what
``measure_tiles`` timed (a measure that returns constants, or that times nothing, fails here),
and the verb's reporting on models without an eligible conv."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

import penjing as pj
from penjing.core.report import last_report
from penjing.winograd_conv import WinogradConfig, WinogradConv2d, autotune
from penjing.winograd_conv import functional as wf


@pytest.fixture
def fake_time(monkeypatch):
    """A clock that advances only when a candidate runs, by that candidate's set cost (s)."""
    state = {"now": 0.0, "cost": {}, "calls": {}}

    def charge(key):
        state["now"] += state["cost"][key]
        state["calls"][key] = state["calls"].get(key, 0) + 1

    real_conv, real_wino = torch.nn.functional.conv2d, wf.winograd_conv2d

    def conv2d(*args, **kwargs):
        charge("direct")
        return real_conv(*args, **kwargs)

    def winograd_conv2d(x, u, r, m, *args, **kwargs):
        charge(m)
        return real_wino(x, u, r, m, *args, **kwargs)

    monkeypatch.setattr(autotune, "clock", lambda: state["now"])
    monkeypatch.setattr(autotune, "F", types.SimpleNamespace(conv2d=conv2d))
    monkeypatch.setattr(wf, "winograd_conv2d", winograd_conv2d)
    return state


def _plan(model, config, x):
    pj.winograd(model, config, example_inputs=x)
    (decision,) = last_report(model).extra["plan"].layers
    return decision


@pytest.mark.parametrize(("cost", "chosen"), [({"direct": 5.0, 2: 3.0, 4: 1.0}, 4),
                                              ({"direct": 5.0, 2: 1.0, 4: 3.0}, 2)])
def test_the_measured_fastest_tile_is_kept(fake_time, cost, chosen):
    fake_time["cost"] = cost
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1))
    x = torch.randn(1, 4, 10, 10)
    d = _plan(model, WinogradConfig(reps=3), x)
    assert d.converted and d.m == chosen and model[0].m == chosen
    assert d.times_ms == {"direct": 1e3 * cost["direct"], "2": 1e3 * cost[2], "4": 1e3 * cost[4]}
    assert d.reason == f"measured {cost['direct'] / cost[chosen]:.2f}x vs direct; fastest of F[2, 4]"
    assert fake_time["calls"] == {"direct": 4, 2: 4, 4: 4}  # one warm-up + 3 timed runs each
    touched = last_report(model).touched[0]
    assert touched.after == f"Winograd F({chosen}x{chosen}, 3x3)"


def test_a_layer_whose_direct_conv_measures_faster_is_left_alone(fake_time):
    fake_time["cost"] = {"direct": 1.0, 2: 2.0, 4: 3.0}
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1))
    with pytest.warns(UserWarning, match=r"^penjing.winograd: no layer was changed \(1 skipped"):
        d = _plan(model, WinogradConfig(reps=1), torch.randn(1, 4, 10, 10))
    assert not d.converted and type(model[0]) is nn.Conv2d
    assert d.reason == "direct conv faster on this shape (1000.00 ms vs 2000.00 ms with F(2))"
    assert last_report(model).skipped[0].reason == d.reason
    # skip_slower=False converts it anyway, with the fastest tile
    d = _plan(model, WinogradConfig(reps=1, skip_slower=False), torch.randn(1, 4, 10, 10))
    assert d.converted and d.m == 2


def test_medians_resist_one_slow_run(fake_time):
    # the third timed run of F(4) is slow (another process): the median ignores it
    fake_time["cost"] = {"direct": 2.0, 2: 1.5, 4: 1.0}
    runs = {"n": 0}
    base = wf.winograd_conv2d  # the fixture's charging wrapper

    def flaky(x, u, r, m, *args, **kwargs):
        if m == 4:
            runs["n"] += 1
            if runs["n"] == 4:  # warm-up is run 1
                fake_time["now"] += 100.0
        return base(x, u, r, m, *args, **kwargs)

    wf.winograd_conv2d = flaky
    try:
        d = _plan(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1)), WinogradConfig(reps=5),
                  torch.randn(1, 4, 10, 10))
    finally:
        wf.winograd_conv2d = base
    assert d.m == 4 and d.times_ms["4"] == 1e3


class TinyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)

    def forward(self, ids):
        h = self.embed(ids)
        return self.head(self.norm(h + self.attn(h, h, h, need_weights=False)[0]))


def test_a_transformer_reports_every_layer_skipped_and_warns():
    model = TinyEncoder()
    ids = torch.randint(0, 50, (2, 7))
    before = model(ids)
    with pytest.warns(UserWarning, match=r"^penjing.winograd: no layer was changed \(4 skipped; see "
                                         r"pj.last_report\(model\)\)$"):
        out = pj.winograd(model, example_inputs=ids)
    assert out is model and torch.equal(model(ids), before)
    report = last_report(model)
    assert report.touched == []
    # Winograd acts on no Linear, so attention stays packed (not split into q/k/v/out)
    assert {s.name: s.reason for s in report.skipped} == {
        n: f"{k} is not an nn.Conv2d (Winograd computes 2-D convolutions)"
        for n, k in (("embed", "Embedding"), ("attn", "MultiheadAttention"),
                     ("attn.out_proj", "NonDynamicallyQuantizableLinear"), ("head", "Linear"))}


def test_explicitly_selected_ineligible_layers_are_errors():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.Conv2d(4, 4, 3))
    with pytest.raises(ValueError, match=r"^winograd: layer 0 \(Conv2d\) was selected but Winograd needs "
                                         r"stride 1, got stride=\(2, 2\)"):
        pj.winograd(model, layers="0")
    with pytest.raises(ValueError, match=r"^winograd: layers entry 'conv9' matches no layer with weights"):
        pj.winograd(model, layers=["1", "conv9"])
    pj.winograd(model, layers="1", measure=False)
    assert isinstance(model[1], WinogradConv2d)
