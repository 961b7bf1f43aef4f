"""The one sensitivity runner (penjing.core.sensitivity): apply to one layer, evaluate, restore."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from penjing.core.report import Report, last_report, record
from penjing.core.sensitivity import Unsupported, measure, sensitivity_scan


def model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3, bias=False))
    x = torch.randn(32, 4)
    y = model(x).argmax(1).detach()  # the dense model is exactly right: accuracy 1.0
    return model, [(x[:16], y[:16]), (x[16:], y[16:])]


def scale(model, name, s):
    with torch.no_grad():
        model.get_submodule(name).weight.mul_(s)


def test_scan_measures_each_layer_alone_and_restores_the_model():
    model, data = model_and_data()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    layers = [model[0], model[2]]
    record(model, Report("prune"))
    before = last_report(model)
    result = sensitivity_scan(model, ["0", "2"], [1.0, 0.0, -1.0], scale, data)
    assert result.baseline == 1.0
    assert [s for s, _ in result.curves["0"]] == [1.0, 0.0, -1.0]
    assert result.curves["0"][0][1] == 1.0 and result.curves["2"][0][1] == 1.0  # s=1 changes nothing
    assert result.curves["2"][2][1] == 0.0  # negated logits: argmax is never the dense one
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert [model[0], model[2]] == layers  # the very same modules are back
    assert last_report(model) is before


def test_restore_model_mode_and_unsupported_settings():
    model, data = model_and_data()
    model.train()

    def apply(trial, name, s):
        if s > 1:
            raise Unsupported(f"{name}: {s} is too much")
        scale(trial, name, s)

    result = sensitivity_scan(model, ["0"], [0.5, 2.0, 0.1], apply, data, restore="model")
    assert [s for s, _ in result.curves["0"]] == [0.5]  # the curve stops at the first refusal
    assert result.skipped == {"0": "0: 2.0 is too much"}
    assert model.training  # measured in eval mode, the mode restored
    with pytest.raises(ValueError, match="at least one setting"):
        sensitivity_scan(model, ["0"], [], apply, data)


def test_a_layer_is_put_back_even_when_apply_fails():
    model, data = model_and_data()
    original = model[0]

    def boom(trial, name, s):
        raise RuntimeError("bad")

    with pytest.raises(RuntimeError, match="bad"):
        sensitivity_scan(model, ["0"], [1.0], boom, data)
    assert model[0] is original


def test_dict_batches_with_a_custom_forward_and_metric():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 1)

        def forward(self, features):
            return self.lin(features).squeeze(-1)

    torch.manual_seed(0)
    net = Net()
    data = [{"features": torch.randn(8, 4), "target": torch.randn(8)}]

    def neg_mse(outputs, batches):
        return -float(sum(((o - b["target"]) ** 2).mean() for o, b in zip(outputs, batches, strict=True)))

    base = measure(net, data, metric=neg_mse)
    result = sensitivity_scan(net, ["lin"], [1.0, 0.0], scale, data, metric=neg_mse)
    assert result.baseline == base == result.curves["lin"][0][1]
    zeroed = -float(((net.lin.bias.detach() - data[0]["target"]) ** 2).mean())
    assert result.curves["lin"][1][1] == pytest.approx(zeroed)
