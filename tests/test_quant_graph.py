"""The int8 graph: int8 tensors flow between layers, fused where the trace proves it safe."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from penjing.core.report import last_report
from penjing.models import LeNet5, SmallResNet
from penjing.quantization import QuantConfig, convert, quantize
from penjing.quantization.int8_graph import int8_graph


def _prepared(model: nn.Module, shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    reference = copy.deepcopy(model)
    quantize(model, QuantConfig(), data=torch.rand(64, *shape), progress=False)
    return model, reference, torch.rand(16, *shape)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("cls", [SmallResNet, LeNet5])
def test_graph_keeps_activations_int8_from_input_to_output(cls):
    model, reference, x = _prepared(cls(), (1, 8, 8))
    per_layer = convert(copy.deepcopy(model))
    convert(model, graph=True)
    code = int8_graph(model).code
    assert code.count("torch.quantize_per_tensor(") == 1 and code.count(".dequantize()") == 1  # edges only
    assert last_report(model).notes == ["int8 tensors flow between layers"]
    if cls is SmallResNet:
        assert code.count("quantized.add_relu") == 3  # each residual sum with its ReLU
    ref = reference(x)
    # the graph also rounds the sums and the logits to int8: measured 0.9% (resnet) and 1.2%
    # (lenet5) from float against 0.5-0.7% for float-out layers; bound at twice that
    assert _rel(model(x), ref) <= 2 * _rel(per_layer(x), ref) + 0.005
    assert torch.equal(copy.deepcopy(model)(x), model(x))  # a copy runs the same int8 graph


class Mobile(nn.Module):
    """conv -> BN -> ReLU6, depthwise conv -> ReLU6, a residual sum, SiLU, Hardswish."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn1, self.r1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6()
        self.dw, self.r2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU6()
        self.pw = nn.Conv2d(8, 8, 1)
        self.silu, self.c2 = nn.SiLU(), nn.Conv2d(8, 8, 1)
        self.hs, self.fc = nn.Hardswish(), nn.Linear(8, 4)

    def forward(self, x):
        h = self.r1(self.bn1(self.c1(x)))
        h = h + self.pw(self.r2(self.dw(h)))
        h = self.hs(self.c2(self.silu(h)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


def test_relu6_fuses_silu_stays_float_and_is_reported():
    model, reference, x = _prepared(Mobile(), (3, 8, 8))
    convert(model, graph=True)
    code = int8_graph(model).code
    assert "r1" not in code and "r2" not in code  # ReLU6 folded into the int8 output range
    assert "quantized.add(" in code and type(model.c2).__name__ == "ConvAct2d"  # Hardswish fused
    assert last_report(model).notes == ["int8 tensors flow between layers; float around: SiLU x1"]
    assert _rel(model(x), reference(x)) < 0.05


def test_untraceable_model_converts_layer_by_layer():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            h = self.fc1(x)
            return self.fc2(h) if float(h.sum()) > -1e9 else h

    model = Branchy().eval()
    quantize(model, QuantConfig(), data=torch.rand(16, 8), progress=False)
    assert "torch.fx cannot trace this model" in last_report(model).notes[-1]
    convert(model, graph=True)
    assert int8_graph(model) is None and type(model.fc1).__name__ == "Int8Linear"


class SkipAroundReLU(nn.Module):
    """The conv's output feeds a ReLU and a skip: fusing the ReLU would clip the skip too."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.relu = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()

    def forward(self, x):
        h = self.c1(x)
        return self.c2(self.relu(h)) + h


def test_relu_on_a_shared_output_is_not_fused():
    model, reference, x = _prepared(SkipAroundReLU(), (3, 6, 6))
    assert float(model.c1(x).min()) < -0.1  # the skip carries negatives a fused ReLU would clip
    fake = model(x)
    convert(model, graph=True)
    assert "self.relu(" in int8_graph(model).code  # still its own op
    assert _rel(model(x), fake) < 0.05
    assert _rel(model(x), reference(x)) < 0.05


class ConvSiLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.act1 = nn.Conv2d(3, 8, 3, padding=1), nn.SiLU()
        self.c2, self.act2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Hardswish()
        self.c3 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c3(self.act2(self.c2(self.act1(self.c1(x)))))


def test_silu_and_hardswish_fuse_into_the_conv_and_match_the_fake_quant_model():
    from penjing.quantization.int8_graph import ConvAct2d

    model, reference, x = _prepared(ConvSiLU(), (3, 6, 6))
    fake = model(x)
    convert(model, graph=True)
    assert isinstance(model.c1, ConvAct2d) and model.c1.act == "swish" and model.c2.act == "hardswish"
    assert "act1" not in int8_graph(model).code and "act2" not in int8_graph(model).code
    assert last_report(model).notes == ["int8 tensors flow between layers"]
    # only the activations' int8 rounding separates it from the fake-quant model
    assert _rel(model(x), fake) < 0.03
    assert _rel(model(x), reference(x)) < 0.05
