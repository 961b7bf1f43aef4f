"""The int8 graph: int8 tensors flow between layers, fused where the trace proves it safe."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from penjing.core.report import last_report
from penjing.models import LeNet5, SmallResNet
from penjing.quantization import QuantConfig, convert, quantize
from penjing.quantization.int8_graph import OnednnConv2d, int8_graph


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


def _u8() -> bool:
    """Does this CPU run the graph's convs on oneDNN with uint8 tensors between them?"""
    from penjing.quantization.int_kernels import _has_onednn_conv
    from penjing.quantization.per_shape import onednn_runs

    return onednn_runs(groups=1) and _has_onednn_conv()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("cls", [SmallResNet, LeNet5])
def test_graph_keeps_activations_int8_from_input_to_output(cls):
    model, reference, x = _prepared(cls(), (1, 8, 8))
    per_layer = convert(copy.deepcopy(model))
    convert(model, graph=True)
    code = int8_graph(model).code
    assert code.count("quantize_channels_last(x,") == 1 and code.count(".dequantize()") == 1  # edges only
    assert last_report(model).notes == ["int8 tensors flow between layers"]
    if cls is SmallResNet:  # each residual sum with its ReLU: in a oneDNN conv (u8 mode) or its own op
        fused = [m for m in model.modules() if isinstance(m, OnednnConv2d) and m.accum_qparams is not None]
        assert (len(fused), code.count("quantized.add_relu")) == ((3, 0) if _u8() else (0, 3))
        assert all(m.sum_act == "relu" for m in fused)
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
    assert type(model.c2).__name__ == "OnednnConv2d" and model.c2.act == "hardswish"  # Hardswish fused
    if _u8():  # the sum runs in pw's kernel, its other input h taken from c1's uint8 output
        assert "quantized.add(" not in code and model.pw.accum_qparams is not None and model.pw.sum_act == "none"
    else:
        assert "quantized.add(" in code
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
    from penjing.quantization.int8_graph import OnednnConv2d

    model, reference, x = _prepared(ConvSiLU(), (3, 6, 6))
    fake = model(x)
    convert(model, graph=True)
    assert isinstance(model.c1, OnednnConv2d) and model.c1.act == "swish" and model.c2.act == "hardswish"
    assert "act1" not in int8_graph(model).code and "act2" not in int8_graph(model).code
    assert last_report(model).notes == ["int8 tensors flow between layers"]
    # only the activations' int8 rounding separates it from the fake-quant model
    assert _rel(model(x), fake) < 0.03
    assert _rel(model(x), reference(x)) < 0.05


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's layout (``timm.layers.BatchNormAct2d``): a BN subclass running batch_norm in its
    own forward, then its ``drop`` and ``act`` children."""

    def __init__(self, channels: int, act: nn.Module):
        super().__init__(channels)
        self.drop, self.act = nn.Identity(), act

    def forward(self, x):
        x = nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                     self.training, 0.1, self.eps)
        return self.act(self.drop(x))


class NormActNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), BatchNormAct2d(8, nn.Hardswish())
        self.c2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), BatchNormAct2d(8, nn.ReLU())
        self.c3, self.bn3 = nn.Conv2d(8, 4, 1), BatchNormAct2d(4, nn.Identity())

    def forward(self, x):
        return self.bn3(self.c3(self.bn2(self.c2(self.bn1(self.c1(x))))))


def test_norm_act_modules_fold_keeping_their_activation_and_it_fuses():
    from penjing.quantization import fold_batchnorm
    from penjing.quantization.int8_graph import OnednnConv2d

    model, reference, x = _prepared(NormActNet(), (3, 6, 6))
    # the fold alone is exact in float: the BN goes into the conv, its activation stays
    folded = copy.deepcopy(reference)
    assert fold_batchnorm(folded) == [("c1", "bn1"), ("c2", "bn2"), ("c3", "bn3")]
    assert type(folded.bn1) is nn.Hardswish and type(folded.bn2) is nn.ReLU and type(folded.bn3) is nn.Identity
    assert torch.allclose(folded(x), reference(x), atol=1e-5)
    assert "folded 3 BatchNorm" in " ".join(last_report(model).notes)
    convert(model)
    code = int8_graph(model).code
    assert isinstance(model.c1, OnednnConv2d) and model.c1.act == "hardswish"  # Hardswish in the kernel
    if _u8():
        assert isinstance(model.c2, OnednnConv2d) and model.c2.act == "relu" and "bn" not in code
    else:
        assert type(model.c2).__name__ in ("ConvReLU2d", "PerShapeConvReLU2d") and "bn" not in code  # no float op left
    assert last_report(model).notes[-1] == "int8 tensors flow between layers"
    assert _rel(model(x), reference(x)) < 0.05


def test_default_convert_says_why_a_model_converts_layer_by_layer():
    mlp = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    quantize(mlp, QuantConfig(), data=torch.rand(16, 8), progress=False)
    convert(mlp)
    assert int8_graph(mlp) is None and type(mlp[0]).__name__ == "Int8Linear"
    assert last_report(mlp).notes[-1] == ("converted layer by layer (float tensors between int8 layers): no "
                                          "quantized Conv2d (graph=None builds the int8 graph for CNNs; "
                                          "graph=True asks for it)")
    cnn, _, _ = _prepared(LeNet5(), (1, 8, 8))
    convert(cnn, graph=False)
    assert int8_graph(cnn) is None and last_report(cnn).notes[-1].endswith(": graph=False was asked for")
    dynamic = LeNet5().eval()
    quantize(dynamic, QuantConfig(activations="dynamic"), progress=False)
    convert(dynamic)
    assert int8_graph(dynamic) is None and "no graph was calibrated" in last_report(dynamic).notes[-1]


def test_onnx_export_of_an_int8_graph_is_refused_with_the_way_out():
    from penjing.export.prepare import export_ready

    model, _, _ = _prepared(LeNet5(), (1, 8, 8))
    convert(model)
    with pytest.raises(ValueError, match=r"convert it layer by layer: pj.convert\(model, graph=False\)"):
        export_ready(model)


class SkipReadTwice(nn.Module):
    """h feeds a residual sum *and* a conv after it: the sum must not be written into h."""

    def __init__(self):
        super().__init__()
        self.c1, self.relu = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.c2, self.c3, self.c4 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        h = self.relu(self.c1(x))
        y = self.c3(self.relu(self.c2(h))) + h
        return torch.cat([y, self.c4(h)], 1)


@pytest.mark.parametrize("cls", [SkipReadTwice, SmallResNet])
def test_u8_mode_computes_what_the_quint8_graph_does(cls, monkeypatch):
    import penjing.quantization.int8_graph as graph

    if not _u8():
        pytest.skip("this CPU runs the quint8 graph only")
    model, reference, x = _prepared(cls(), (3, 8, 8) if cls is SkipReadTwice else (1, 8, 8))
    quint8 = copy.deepcopy(model)
    convert(model, graph=True)
    with monkeypatch.context() as patch:
        patch.setattr(graph, "u8_mode", lambda *_: False)
        convert(quint8, graph=True)
    assert not any(isinstance(m, OnednnConv2d) for m in quint8.modules())
    if cls is SkipReadTwice:
        assert model.c3.accum_qparams is None  # h is read later by c4: the sum stays its own op
    # the fused sums skip one rounding of the conv's output to int8: measured 0.4-0.6%
    assert _rel(model(x), quint8(x)) < 0.02
    assert _rel(model(x), reference(x)) <= _rel(quint8(x), reference(x)) + 0.005


def test_summary_reads_every_int8_graph_layer_as_8_bit_integers():
    import penjing as pj

    # a max pool after the first conv and a Linear head: torch.ao quantized modules (packed
    # weights) as well as oneDNN ones on a VNNI CPU; all of them torch.ao's elsewhere
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()
    float_rows = pj.summary(model).rows
    model, _, _ = _prepared(model, (3, 8, 8))
    convert(model, graph=True)
    rows = pj.summary(model).rows
    assert [(r.name, r.shape, r.params, r.bias_params) for r in rows] == \
        [(r.name, r.shape, r.params, r.bias_params) for r in float_rows]
    assert all(r.bits == 8 for r in rows) and sum(r.bytes for r in rows) <= sum(r.params for r in rows)
    assert {r.type for r in rows}.isdisjoint({"Conv2d", "Linear"}) and rows[-1].type == "QuantizedLinear"
    assert rows[0].type in ("PerShapeConvReLU2d", "QuantizedConvReLU2d")  # the packed torch.ao conv
    codes = model[0].weight().int_repr()
    assert rows[0].nonzeros == int(torch.count_nonzero(codes))
