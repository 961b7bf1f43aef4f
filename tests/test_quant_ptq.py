"""PTQ, BatchNorm folding, int8 execution, stacking with pruning + the codec, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import penjing as pj
from penjing.core.params import attach
from penjing.models import LeNet5, LeNet300, SmallResNet
from penjing.quantization import (
    Int8Conv2d,
    Int8Linear,
    QuantConfig,
    convert,
    fold_batchnorm,
    quantize,
    sensitivity,
)
from penjing.quantization.fake_quant import WeightFakeQuant
from penjing.quantization.report import layer_report, state_bytes


class Mask(nn.Module):
    """A minimal pruning parametrization (W = M * V), standing in for penjing.pruning."""

    def __init__(self, weight: torch.Tensor, sparsity: float):
        super().__init__()
        k = int(weight.numel() * sparsity)
        threshold = weight.abs().flatten().kthvalue(k).values
        self.register_buffer("mask", (weight.abs() > threshold).float())

    def forward(self, w):
        return w * self.mask


def _randomize_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)


@pytest.fixture(scope="module")
def lenet300(digits_data):
    train, _ = digits_data
    torch.manual_seed(0)
    model = LeNet300()
    pj.fit(model, train, epochs=8, lr=3e-3, batch_size=128, progress=False)
    return model


def test_fold_batchnorm_is_exact_in_float():
    torch.manual_seed(0)
    model = SmallResNet()
    _randomize_bn(model)
    model.eval()
    x = torch.randn(8, 1, 8, 8)
    before = model(x)
    pairs = fold_batchnorm(model)
    assert len(pairs) == 9  # stem + 2 per block (3 blocks) + 2 shortcuts
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(model(x), before, atol=1e-5, rtol=1e-5)


def test_fold_batchnorm_keeps_a_pruning_mask():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    _randomize_bn(model)
    attach(model[0], Mask(model[0].weight.detach(), 0.5))
    x = torch.randn(2, 3, 5, 5)
    before = model(x)
    fold_batchnorm(model)
    assert torch.allclose(model(x), before, atol=1e-5)
    assert int((model[0].weight == 0).sum()) >= model[0].weight.numel() // 2


def test_ptq_w8a8_lenet300_within_half_a_point(lenet300, digits_data):
    train, test = digits_data
    model = copy.deepcopy(lenet300)
    before = pj.evaluate(model, test)
    quantize(model, QuantConfig(bits=8, per_channel=True, progress=False), calibration=train)
    after = pj.evaluate(model, test)
    assert after >= before - 0.005
    int8 = convert(copy.deepcopy(model))
    assert pj.evaluate(int8, test) >= before - 0.005
    assert all(isinstance(m, Int8Linear) for m in (int8.fc1, int8.fc2, int8.fc3))
    rows = layer_report(model)
    assert [r.name for r in rows] == ["fc1", "fc2", "fc3"]
    assert all(r.bits == 8 and r.act_bits == 8 and r.sqnr_db > 30 for r in rows)


def _calib(shape, n=64):
    torch.manual_seed(1)
    return TensorDataset(torch.rand(n, *shape), torch.zeros(n, dtype=torch.long))


@pytest.mark.parametrize("backend", ["auto", "onednn", "reference"])
@pytest.mark.parametrize("grid", ["asym-acts", "sym-acts", "7-bit-weights"])
def test_int8_execution_matches_fake_quant(backend, grid):
    torch.manual_seed(0)
    model = LeNet5().eval()
    cfg = QuantConfig(bits=8, act_symmetric=grid == "sym-acts", progress=False,
                      act_reduce_range=grid != "7-bit-weights", weight_reduce_range=grid == "7-bit-weights")
    quantize(model, cfg, calibration=_calib((1, 8, 8)))
    x = torch.rand(16, 1, 8, 8) * 1.2 - 0.1  # partly out of the calibrated range: saturates
    fake = model(x)
    int8 = convert(copy.deepcopy(model), backend=backend)
    assert isinstance(int8.conv1, Int8Conv2d) and isinstance(int8.fc2, Int8Linear)
    out = int8(x)
    # one quantization step of the output: the largest possible single-rounding difference
    # in the last layer's input times its largest weight row norm
    step = float(int8.fc2.input_scale) * float((int8.fc2.weight.float().abs().sum(1) * int8.fc2.weight_scale).max())
    assert (out - fake).abs().max().item() <= step
    assert torch.allclose(out, fake, atol=1e-3)


def test_int8_weight_only_uses_dynamic_activations():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5)).eval()
    quantize(model, QuantConfig(bits=8, act_bits=None, progress=False))
    x = torch.randn(4, 20)
    fake = model(x)
    int8 = convert(copy.deepcopy(model))
    assert not int8[0].static
    rel = (int8(x) - fake).norm() / fake.norm()
    assert rel < 0.02


def test_converted_state_dict_holds_int8_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = LeNet300().eval()
    quantize(model, QuantConfig(progress=False), calibration=_calib((64,)))
    int8 = convert(copy.deepcopy(model))
    state = int8.state_dict()
    assert state["fc1.weight"].dtype == torch.int8
    assert state_bytes(int8) < state_bytes(LeNet300()) / 3.5
    torch.save(state, tmp_path / "int8.pt")
    fresh = convert(quantize(LeNet300().eval(), QuantConfig(progress=False), calibration=_calib((64,), 8)))
    fresh.load_state_dict(torch.load(tmp_path / "int8.pt", weights_only=True))
    x = torch.rand(5, 64)
    assert torch.equal(fresh(x), int8(x))


def test_prune_then_quantize_keeps_zeros_and_saves_sparse_int8(tmp_path):
    codec = pytest.importorskip("penjing.codec")
    torch.manual_seed(0)
    model = LeNet300().eval()
    for _, layer in pj.select(model):
        attach(layer, Mask(layer.weight.detach(), 0.9))
    zeros = {n: (layer.weight == 0) for n, layer in pj.select(model)}
    for symmetric in (True, False):
        trial = copy.deepcopy(model)
        quantize(trial, QuantConfig(bits=8, symmetric=symmetric, act_bits=None, progress=False))
        for name, layer in pj.select(trial):
            assert bool((layer.weight[zeros[name]] == 0).all())
            assert type(layer.parametrizations.weight[-1]) is WeightFakeQuant  # stacked after the mask
    quantize(model, QuantConfig(bits=8, act_bits=None, progress=False))
    expected = {f"{n}.weight": layer.weight.detach().clone() for n, layer in pj.select(model)}
    info = codec.save(model, tmp_path / "m.pjz")
    state = codec.load(tmp_path / "m.pjz")
    for key, tensor in expected.items():
        assert torch.equal(state[key], tensor)
        assert info[key].codec in ("affine", "sparse-codebook", "codebook")
    dense_bytes = sum(t.numel() * 4 for t in expected.values())
    # 10% nonzeros at 8 bits + sparse indices: well under a tenth of the float weights
    assert info.bytes < dense_bytes / 8


def test_codec_hint_reproduces_weight_exactly():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Conv2d(3, 6, 3))
    quantize(layer, QuantConfig(bits=4, symmetric=False, act_bits=None, progress=False))
    p = layer[0].parametrizations.weight[-1]
    hint = p.codec_hint()["affine"]
    w = layer[0].weight.detach()
    q = torch.round(w / hint["scale"].reshape(-1, 1, 1, 1) + hint["zero_point"].reshape(-1, 1, 1, 1))
    assert int(q.min()) >= -8 and int(q.max()) <= 7
    back = (q - hint["zero_point"].reshape(-1, 1, 1, 1).float()) * hint["scale"].reshape(-1, 1, 1, 1)
    assert torch.equal(back, w) and hint["axis"] == 0 and hint["bits"] == 4
    assert pj.core.stats.layer_stats(layer)[0].bits == 4


def test_mixed_precision_and_sensitivity(lenet300, digits_data):
    _, test = digits_data
    result = sensitivity(lenet300, test, bits=(2, 8))
    assert set(result.accuracy) == {"fc1", "fc2", "fc3"}
    assert all(result.accuracy[n][8] >= result.baseline - 0.01 for n in result.accuracy)
    assert all(b in (2, 8) for b in result.suggestion.values())
    assert "suggested bits" in result.to_markdown()
    model = copy.deepcopy(lenet300)
    quantize(model, QuantConfig(bits=4, layer_bits={"fc3": 8}, act_bits=None, progress=False))
    assert [r.bits for r in layer_report(model)] == [4, 4, 8]


# ---------------------------------------------------------------- bad input


def test_wrong_shape_calibration():
    with pytest.raises(ValueError, match=r"calibration batch of shape \(4, 10\) does not fit LeNet300"):
        quantize(LeNet300(), QuantConfig(progress=False), calibration=torch.randn(4, 10))


def test_empty_calibration():
    empty = TensorDataset(torch.empty(0, 64), torch.empty(0, dtype=torch.long))
    with pytest.raises(ValueError, match="the calibration set is empty"):
        quantize(LeNet300(), QuantConfig(progress=False), calibration=empty)
    with pytest.raises(ValueError, match="the calibration set is empty"):
        quantize(LeNet300(), QuantConfig(progress=False), calibration=[])


def test_no_quantizable_layers():
    with pytest.raises(ValueError, match="Sequential has no quantizable layers"):
        quantize(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), QuantConfig(act_bits=None))
    with pytest.raises(ValueError, match="has no quantized Linear/Conv2d layers to convert"):
        convert(LeNet300())


def test_activation_quantization_needs_calibration():
    with pytest.raises(ValueError, match="activation quantization needs calibration data"):
        quantize(LeNet300(), QuantConfig())


def test_quantize_twice_is_refused():
    model = quantize(LeNet300(), QuantConfig(act_bits=None))
    with pytest.raises(ValueError, match="already quantized"):
        quantize(model, QuantConfig(act_bits=None))


def test_full_range_weights_and_activations_warn_of_int16_saturation():
    model = nn.Sequential(nn.Linear(8, 4))
    quantize(model, QuantConfig(act_reduce_range=False, weight_reduce_range=False, progress=False),
             calibration=torch.rand(16, 8))
    with pytest.warns(UserWarning, match="can saturate int16 sums on CPUs without VNNI"):
        convert(model)


def test_sixteen_bit_layers_stay_fake_quantized():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    quantize(model, QuantConfig(bits=8, layer_bits={"1": 16}, act_bits=None))
    with pytest.warns(UserWarning, match="16-bit weights do not fit int8"):
        convert(model)
    assert isinstance(model[0], Int8Linear) and isinstance(model[1], nn.Linear)


def test_asymmetric_weights_and_same_padding_run_on_the_reference_backend():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding="same"), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 25, 3)).eval()
    quantize(model, QuantConfig(bits=6, symmetric=False, progress=False), calibration=torch.rand(32, 2, 5, 5))
    x = torch.rand(4, 2, 5, 5)
    fake = model(x)
    int8 = convert(copy.deepcopy(model))
    assert int8[0].backend == "reference" and int8[3].backend == "reference"
    assert torch.allclose(int8(x), fake, atol=1e-4)


def test_weight_only_conv_quantizes_inputs_per_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2)).eval()
    quantize(model, QuantConfig(bits=8, act_bits=None, progress=False))
    x = torch.randn(2, 3, 9, 9)
    fake = model(x)
    int8 = convert(copy.deepcopy(model))
    assert isinstance(int8[0], Int8Conv2d) and not int8[0].static
    assert (int8(x) - fake).norm() / fake.norm() < 0.02


def test_converted_model_saves_compactly_with_the_codec(tmp_path):
    codec = pytest.importorskip("penjing.codec")
    torch.manual_seed(0)
    model = convert(quantize(LeNet300().eval(), QuantConfig(progress=False), calibration=_calib((64,))))
    info = codec.save(model, tmp_path / "int8.pjz")
    state = codec.load(tmp_path / "int8.pjz")
    assert state["fc1.weight"].dtype == torch.int8
    assert info.bytes < state_bytes(LeNet300()) / 3.5
    fresh = convert(quantize(LeNet300().eval(), QuantConfig(progress=False), calibration=_calib((64,), 8)))
    fresh.load_state_dict(state)
    x = torch.rand(3, 64)
    assert torch.equal(fresh(x), model(x))


def test_converted_int8_layers_are_rows_of_the_summary():
    from penjing.core.stats import layer_stats

    torch.manual_seed(0)
    model = LeNet5().eval()
    quantize(model, QuantConfig(progress=False), calibration=_calib((1, 8, 8)))
    rows = {r.name: r for r in layer_stats(convert(model))}
    assert list(rows) == ["conv1", "conv2", "fc1", "fc2"]
    assert rows["fc1"].type == "Int8Linear" and rows["conv1"].type == "Int8Conv2d"
    assert all(r.bits == 8 and r.bytes == r.params for r in rows.values())
