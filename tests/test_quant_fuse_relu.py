"""ReLU folding at int8 conversion: fused only where the trace proves it safe, and exact."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from penjing.models import LeNet5, LeNet300, SmallResNet
from penjing.quantization import Int8Linear, QuantConfig, convert, quantize


def _quantized(model: nn.Module, shape: tuple[int, ...]) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model.eval()
    quantize(model, QuantConfig(), data=torch.rand(64, *shape), progress=False)
    return model, torch.rand(32, *shape) * 1.2 - 0.1


@pytest.mark.parametrize("backend", ["auto", "onednn", "reference"])
def test_lenet300_relus_fold_into_the_linears_with_identical_output(backend):
    model, x = _quantized(LeNet300(), (64,))
    plain = convert(copy.deepcopy(model), backend, fuse_relu=False)
    fused = convert(copy.deepcopy(model), backend)
    assert isinstance(fused.act, nn.Identity) and isinstance(plain.act, nn.ReLU)
    assert [fused.fc1.fused_relu, fused.fc2.fused_relu, fused.fc3.fused_relu] == [True, True, False]
    assert torch.equal(fused(x), plain(x))


def test_conv_relus_fold_and_match():
    model, x = _quantized(LeNet5(), (1, 8, 8))
    plain = convert(copy.deepcopy(model), fuse_relu=False, graph=False)
    fused = convert(copy.deepcopy(model), graph=False)
    assert fused.conv1.fused_relu and fused.conv2.fused_relu and fused.fc1.fused_relu
    assert torch.allclose(fused(x), plain(x), atol=1e-6)


class SharedAfterSum(nn.Module):
    """One ReLU module used after an int8 layer and after a residual sum: not foldable."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.relu = nn.Linear(8, 8), nn.Linear(8, 8), nn.ReLU()

    def forward(self, x):
        h = self.relu(self.fc1(x))
        return self.relu(self.fc2(h) + h)


class OutputUsedTwice(nn.Module):
    """The int8 layer's output feeds the ReLU and a skip: folding would change the skip."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.relu = nn.Linear(8, 8), nn.Linear(8, 8), nn.ReLU()

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(self.relu(h)) + h


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so nothing is folded."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.relu = nn.Linear(8, 8), nn.Linear(8, 8), nn.ReLU()

    def forward(self, x):
        h = self.relu(self.fc1(x))
        return self.fc2(h) if float(h.sum()) >= 0 else -self.fc2(h)


@pytest.mark.parametrize("cls", [SharedAfterSum, OutputUsedTwice, Untraceable])
def test_unsafe_relus_are_left_alone(cls):
    model, x = _quantized(cls(), (8,))
    plain = convert(copy.deepcopy(model), fuse_relu=False)
    out = convert(model)
    assert isinstance(out.relu, nn.ReLU)
    assert not out.fc1.fused_relu and not out.fc2.fused_relu
    assert torch.equal(out(x), plain(x))


def test_resnet_folds_conv_relus_but_keeps_the_one_after_the_sum():
    model, x = _quantized(SmallResNet(), (1, 8, 8))
    plain = convert(copy.deepcopy(model), fuse_relu=False, graph=False)
    fused = convert(copy.deepcopy(model), graph=False)
    assert torch.allclose(fused(x), plain(x), atol=1e-5)
    assert any(getattr(m, "fused_relu", False) for m in fused.modules())
    assert sum(isinstance(m, nn.ReLU) for m in fused.modules()) >= 1  # after each residual sum


def test_fused_linear_runs_relu_in_the_kernel_for_3d_input():
    model, _ = _quantized(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), (8,))
    int8 = convert(model)
    assert isinstance(int8[0], Int8Linear) and int8[0].fused_relu and isinstance(int8[1], nn.Identity)
    assert (int8[0](torch.randn(2, 5, 8)) >= 0).all()
