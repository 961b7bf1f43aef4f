"""The int8 graph's convs packed per input shape, and its channels-last input quantization."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from penjing.quantization import QuantConfig, convert, quantize
from penjing.quantization.int8_graph import OnednnConv2d, int8_graph, quantize_channels_last
from penjing.quantization.per_shape import (
    MAX_SHAPES,
    PerShapeConv2d,
    PerShapeConvReLU2d,
    onednn_runs,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # torch.ao's deprecation notices


def _pair(relu: bool, groups: int = 1):
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    torch.manual_seed(0)
    weight = torch.quantize_per_channel(torch.randn(8, 8 // groups, 3, 3) * 0.1, torch.rand(8, dtype=torch.double) * 0.01 + 0.005,
                                        torch.zeros(8, dtype=torch.long), 0, torch.qint8)
    bias = torch.randn(8) * 0.1
    made = []
    for cls in ((nniq.ConvReLU2d, PerShapeConvReLU2d) if relu else (nnq.Conv2d, PerShapeConv2d)):
        conv = cls(8, 8, 3, 1, 1, groups=groups)
        conv.set_weight_bias(weight, bias)
        conv.scale, conv.zero_point = 0.02, 0 if relu else 128
        made.append(conv)
    return made


def _input(batch: int) -> torch.Tensor:
    x = torch.randn(batch, 8, 6, 6)
    return torch.quantize_per_tensor(x, 0.03, 128, torch.quint8).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("relu", [False, True])
def test_per_shape_conv_equals_torch_ao_at_every_batch_and_keeps_a_few_packs(relu):
    reference, conv = _pair(relu)
    for batch in (4, 1, 3, 1, 2, 5, 4):
        x = _input(batch)
        assert torch.equal(conv(x).int_repr(), reference(x).int_repr())
    assert len(conv._pj_packs) == MAX_SHAPES  # 5 shapes seen: the oldest (batch 4) went, then came back
    assert [key[0][0] for key in conv._pj_packs] == [3, 2, 5, 4]
    twin = copy.deepcopy(conv)  # a copy packs afresh
    assert "_pj_packs" not in twin.__dict__
    x = _input(2)
    assert torch.equal(twin(x).int_repr(), reference(x).int_repr())


def test_graph_convs_are_packed_per_shape_where_the_x86_engine_runs_onednn():
    # torch.ao convs here: a max pool reads the first (its uint8 kernel is slow), the output the second
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1)).eval()
    quantize(model, QuantConfig(), data=torch.rand(16, 3, 8, 8), progress=False)
    convert(model, graph=True)
    per_shape = onednn_runs(groups=1)
    assert isinstance(model[0], PerShapeConvReLU2d) is per_shape and isinstance(model[3], PerShapeConv2d) is per_shape
    x = torch.rand(5, 3, 8, 8)
    full = model(x)
    assert all(torch.equal(model(x[i:i + 1]), full[i:i + 1]) for i in range(5))  # each batch size, one result


def test_conv_act_packs_per_shape_and_copies_after_running():
    class ConvSiLU(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.SiLU()

        def forward(self, x):
            return self.act(self.conv(x))

    model = ConvSiLU().eval()
    quantize(model, QuantConfig(), data=torch.rand(16, 3, 8, 8), progress=False)
    convert(model, graph=True)
    if not isinstance(model.conv, OnednnConv2d):
        pytest.skip("no oneDNN conv kernel in this torch build")
    x = torch.rand(6, 3, 8, 8)
    full = model(x)
    assert all(torch.equal(model(x[i:i + 2]), full[i:i + 2]) for i in (0, 2, 4))
    assert sorted(key[0] for key in model.conv._packed) == [2, 6]
    twin = copy.deepcopy(model)  # the packed oneDNN weights are opaque: the copy packs its own
    assert twin.conv._packed == {} and torch.equal(twin(x), full)


def test_channels_last_quantization_gives_the_same_integers():
    x = torch.randn(2, 3, 5, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        plain = torch.quantize_per_tensor(x, 0.02, 100, torch.quint8)
        fast = quantize_channels_last(x, 0.02, 100, torch.quint8)
        unbatched = quantize_channels_last(x[0], 0.02, 100, torch.quint8)
    assert fast.is_contiguous(memory_format=torch.channels_last) and not plain.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(fast.int_repr(), plain.int_repr()) and (fast.q_scale(), fast.q_zero_point()) == (0.02, 100)
    assert torch.equal(unbatched.int_repr(), plain[0].int_repr())  # a 3-D input is quantized as it is
    assert "quantize_channels_last" in int8_graph_code()


def int8_graph_code() -> str:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).eval()
    quantize(model, QuantConfig(), data=torch.rand(8, 3, 6, 6), progress=False)
    convert(model, graph=True)
    return int8_graph(model).code
