"""The int8 graph's convs packed per input shape, its channels-last input quantization, and its
quint8 <-> uint8 conversions as views of the same memory."""

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
from penjing.quantization.u8_views import quint8_view, uint8_view, views_work

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


def test_uint8_and_quint8_views_share_memory_and_keep_grid_and_layout():
    x = torch.randn(2, 5, 3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        q = quantize_channels_last(x, 0.02, 100, torch.quint8)[:, 1:4]  # a strided view, offset into its storage
    assert views_work()  # the PyTorch builds this project runs on (2.13, 2.14)
    u = uint8_view(q)
    assert u.dtype == torch.uint8 and u.data_ptr() == q.data_ptr() and u.stride() == q.stride()
    assert torch.equal(u, q.int_repr())
    back = quint8_view(u, 0.02, 100)
    assert back.data_ptr() == q.data_ptr() and (back.q_scale(), back.q_zero_point()) == (0.02, 100)
    assert torch.equal(back.dequantize(), q.dequantize())
    u[0, 0, 0, 0] = 7  # the same memory: a write shows through every view
    assert int(q.int_repr()[0, 0, 0, 0]) == 7 and int(back.int_repr()[0, 0, 0, 0]) == 7


def test_views_fall_back_to_copies_where_torch_refuses_them(monkeypatch):
    import penjing.quantization.u8_views as views

    q = torch.quantize_per_tensor(torch.randn(2, 3, 4, 4), 0.05, 120, torch.quint8)
    monkeypatch.setattr(views, "views_work", lambda: False)
    u = uint8_view(q)
    assert torch.equal(u, q.int_repr()) and u.data_ptr() != q.data_ptr()
    back = quint8_view(u, 0.05, 120)
    assert torch.equal(back.int_repr(), u) and back.data_ptr() != u.data_ptr() and back.q_zero_point() == 120


def _graph_pair(model: nn.Module, shape: tuple[int, ...], monkeypatch,
                u8: bool = True) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The model's int8 graph with views, the same graph with copies (PyTorch's own
    conversions, as before the views), and the float model; ``u8=False``: the quint8 graph
    (what a CPU without VNNI builds), whatever this CPU has."""
    import penjing.quantization.int8_graph as graph
    import penjing.quantization.u8_views as views

    torch.manual_seed(0)
    model = model.eval()
    reference = copy.deepcopy(model)
    quantize(model, QuantConfig(), data=torch.rand(32, *shape), progress=False)
    copies = copy.deepcopy(model)
    with monkeypatch.context() as patch:
        if not u8:
            patch.setattr(graph, "u8_mode", lambda *_: False)
        convert(model, graph=True)
        patch.setattr(views, "views_work", lambda: False)
        convert(copies, graph=True)
    return model, copies, reference


class _ConvSiLUHardswish(nn.Module):
    """Two oneDNN convs with quint8 in and out (SiLU / Hardswish fused) and a max pool."""

    def __init__(self):
        super().__init__()
        self.c1, self.act1 = nn.Conv2d(3, 8, 3, padding=1), nn.SiLU()
        self.c2, self.act2, self.pool = nn.Conv2d(8, 8, 3, padding=1), nn.Hardswish(), nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(self.act2(self.c2(self.act1(self.c1(x)))))


class _PoolResidual(nn.Module):
    """resnet's stem: conv -> ReLU -> max pool, whose output is read by a conv and a residual sum."""

    def __init__(self):
        super().__init__()
        self.c0, self.pool = nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2)
        self.c1, self.c2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        p = self.pool(torch.relu(self.c0(x)))
        return torch.relu(self.c2(torch.relu(self.c1(p))) + p)


@pytest.mark.parametrize("u8", [True, False], ids=["u8 mode where the CPU has it", "quint8 graph"])
@pytest.mark.parametrize("cls", ["SmallResNet", "_ConvSiLUHardswish", "_PoolResidual"])
def test_graph_with_views_computes_bit_for_bit_what_it_does_with_copies(cls, u8, monkeypatch):
    from penjing.models import SmallResNet

    model_cls, shape = {"SmallResNet": (SmallResNet, (1, 8, 8)), "_ConvSiLUHardswish": (_ConvSiLUHardswish, (3, 8, 8)),
                        "_PoolResidual": (_PoolResidual, (3, 8, 8))}[cls]
    model, copies, _ = _graph_pair(model_cls(), shape, monkeypatch, u8)
    code = int8_graph(model).code
    if cls == "_PoolResidual" and isinstance(model.c2, OnednnConv2d):  # u8 mode: the sum in c2's kernel,
        assert model.c2.accum_qparams is not None and "clone" not in code  # written into the pool's memory
    x = torch.rand(6, *shape)
    expected = copies(x)

    def copied(*_args, **_kwargs):
        raise AssertionError("a quint8 <-> uint8 copy ran")

    with monkeypatch.context() as patch:  # the graph with views runs without PyTorch's copying conversions
        patch.setattr(torch.Tensor, "int_repr", copied)
        patch.setattr(torch, "_make_per_tensor_quantized_tensor", copied)
        out = model(x)
    assert torch.equal(out, expected)
    with torch.inference_mode():  # inference tensors take the views too
        assert torch.equal(model(x), expected)


class SkipThroughDropout(nn.Module):
    """A residual sum whose other input is a dropout of the pool, which hands on the very tensor
    that c3 reads after the sum: written in place, the sum would corrupt what c3 reads."""

    def __init__(self):
        super().__init__()
        self.c1, self.relu, self.pool = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.drop, self.c2, self.c3 = nn.Dropout(0.1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        p = self.pool(self.relu(self.c1(x)))
        y = self.drop(p) + self.c2(p)  # the dropout first: c2, computed second, takes the sum
        return torch.cat([y, self.c3(p)], 1)


def test_a_fused_sum_never_writes_into_memory_that_is_read_after_it(monkeypatch):
    import penjing.quantization.int8_graph as graph

    model, copies, reference = _graph_pair(SkipThroughDropout(), (3, 8, 8), monkeypatch)
    if not isinstance(model.c2, OnednnConv2d) or model.c2.accum_qparams is None:
        pytest.skip("this CPU runs the quint8 graph only (no fused sums)")
    assert "clone" in int8_graph(model).code  # the dropout's output is the pool's: the sum goes into a copy
    quint8 = copy.deepcopy(reference)
    quantize(quint8, QuantConfig(), data=torch.rand(32, 3, 8, 8), progress=False)
    with monkeypatch.context() as patch:
        patch.setattr(graph, "u8_mode", lambda *_: False)
        convert(quint8, graph=True)
    x = torch.rand(6, 3, 8, 8)
    # the fused sum skips one rounding to int8 (0.5% here); written into the pool's memory, c3
    # read the sum instead of the pool: 27% off
    rel = float((model(x) - quint8(x)).norm() / quint8(x).norm())
    assert rel < 0.02
    assert torch.equal(model(x), copies(x))
