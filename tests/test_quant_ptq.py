"""PTQ, BatchNorm folding, int8 execution, stacking with pruning + the codec, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import penjing as pj
from penjing.core.mask import Mask
from penjing.core.report import last_report
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
    pj.prune(model, pj.PruneConfig(sparsity=0.5), progress=False)  # the real pruning mask
    assert isinstance(model[0].parametrizations.weight[0], Mask)
    x = torch.randn(2, 3, 5, 5)
    before = model(x)
    fold_batchnorm(model)
    assert torch.allclose(model(x), before, atol=1e-5)
    assert int((model[0].weight == 0).sum()) >= model[0].weight.numel() // 2


def test_ptq_w8a8_lenet300_within_half_a_point(lenet300, digits_data):
    train, test = digits_data
    model = copy.deepcopy(lenet300)
    before = pj.evaluate(model, test)
    quantize(model, QuantConfig(bits=8, per_channel=True), data=train, progress=False)
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


#: the x86 kernels sum int8 products exactly in int32; only the float rescale of the sums
#: differs from the float64 reference (measured: <= 1 float32 ulp of the largest output per
#: layer, 7e-9 on outputs of 0.09). The bound allows 32 ulps of the largest output.
ULPS = 32 * torch.finfo(torch.float32).eps


def _on_grid(layer, shape: tuple[int, ...]) -> torch.Tensor:
    """Inputs that sit exactly on ``layer``'s input grid, so no rounding is ambiguous."""
    q = torch.randint(layer.in_qmin, layer.in_qmax + 1, shape).float()
    return (q - float(layer.input_zero_point)) * float(layer.input_scale)


@pytest.mark.parametrize("backend", ["auto", "onednn"])
@pytest.mark.parametrize("grid", ["asym-acts", "sym-acts", "7-bit-weights"])
def test_int8_kernels_match_the_exact_float64_reference(backend, grid):
    torch.manual_seed(0)
    model = LeNet5().eval()
    cfg = QuantConfig(bits=8, act_symmetric=grid == "sym-acts",
                      reduce_range="weights" if grid == "7-bit-weights" else "activations")
    quantize(model, cfg, data=_calib((1, 8, 8)), progress=False)
    reference = convert(copy.deepcopy(model), backend="reference", fuse_relu=False, graph=False)
    int8 = convert(copy.deepcopy(model), backend=backend, fuse_relu=False, graph=False)
    assert isinstance(int8.conv1, Int8Conv2d) and isinstance(int8.fc2, Int8Linear)
    assert int8.conv1.backend != "reference"
    # layer by layer, on inputs exactly on the grid: the kernels sum the same integers, so
    # only the float rescale may differ (measured: 1 float32 ulp of the largest output)
    shapes = {"conv1": (16, 1, 8, 8), "conv2": (16, 20, 3, 3), "fc1": (16, 200), "fc2": (16, 500)}
    for name, shape in shapes.items():
        layer, exact_layer = getattr(int8, name), getattr(reference, name)
        x = _on_grid(layer, shape)
        exact = exact_layer(x)
        assert (layer(x) - exact).abs().max().item() <= ULPS * float(exact.abs().max()), name
    # the whole model: the same, except where a ulp moves a value across a rounding
    # boundary of the next layer's input; that costs at most one input step of fc2
    x = torch.rand(16, 1, 8, 8) * 1.2 - 0.1  # partly out of the calibrated range: saturates
    exact = reference(x)
    step = float(int8.fc2.input_scale) * float((int8.fc2.weight.float().abs().sum(1) * int8.fc2.weight_scale).max())
    diff = (int8(x) - exact).abs()
    assert float((diff <= ULPS * float(exact.abs().max())).float().mean()) >= 0.9
    assert diff.max().item() <= step
    fake = model(x)  # fake quant sums in float32: the same one-step bound
    assert (fake - exact).abs().max().item() <= step


def test_int8_weight_only_computes_in_float_on_the_int8_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5)).eval()
    quantize(model, QuantConfig(bits=8, activations="none"), progress=False)
    x = torch.randn(4, 20)
    fake = model(x)
    int8 = convert(copy.deepcopy(model))
    assert int8[0].mode == "weight" and int8[0].weight_int8.dtype == torch.int8
    assert torch.allclose(int8(x), fake, rtol=0, atol=ULPS * float(fake.abs().max()))
    # weight-only: a sample's output does not depend on the rest of its batch (up to the
    # float32 GEMM's own blocking)
    assert torch.allclose(int8(x[:1]), int8(x)[:1], rtol=0, atol=ULPS * float(fake.abs().max()))


def test_converted_state_dict_holds_int8_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = LeNet300().eval()
    quantize(model, QuantConfig(), data=_calib((64,)), progress=False)
    int8 = convert(copy.deepcopy(model))
    state = int8.state_dict()
    assert state["fc1.weight"].dtype == torch.int8
    assert state_bytes(int8) < state_bytes(LeNet300()) / 3.5
    torch.save(state, tmp_path / "int8.pt")
    fresh = convert(quantize(LeNet300().eval(), QuantConfig(), data=_calib((64,), 8), progress=False))
    fresh.load_state_dict(torch.load(tmp_path / "int8.pt", weights_only=True))
    x = torch.rand(5, 64)
    assert torch.equal(fresh(x), int8(x))


def test_prune_then_quantize_keeps_zeros_and_saves_sparse_int8(tmp_path):
    codec = pytest.importorskip("penjing.codec")
    torch.manual_seed(0)
    model = LeNet300().eval()
    pj.prune(model, pj.PruneConfig(sparsity=0.9), progress=False)  # the real pruning mask
    zeros = {n: (layer.weight == 0) for n, layer in pj.select(model)}
    for symmetric in (True, False):
        trial = copy.deepcopy(model)
        quantize(trial, QuantConfig(bits=8, symmetric=symmetric, activations="none"), progress=False)
        for name, layer in pj.select(trial):
            assert bool((layer.weight[zeros[name]] == 0).all())
            assert type(layer.parametrizations.weight[-1]) is WeightFakeQuant  # stacked after the mask
    quantize(model, QuantConfig(bits=8, activations="none"), progress=False)
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
    quantize(layer, QuantConfig(bits=4, symmetric=False, activations="none"), progress=False)
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
    quantize(model, QuantConfig(bits=4, layer_bits={"fc3": 8}, activations="none"), progress=False)
    assert [r.bits for r in layer_report(model)] == [4, 4, 8]


# ---------------------------------------------------------------- bad input


def test_wrong_shape_calibration_is_rolled_back():
    model = LeNet300()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"calibration batch of shape \(4, 10\) does not fit LeNet300"):
        quantize(model, QuantConfig(), data=torch.randn(4, 10), progress=False)
    assert not any(hasattr(m, "parametrizations") or hasattr(m, "input_quant") for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_empty_calibration():
    empty = TensorDataset(torch.empty(0, 64), torch.empty(0, dtype=torch.long))
    with pytest.raises(ValueError, match="the calibration set is empty"):
        quantize(LeNet300(), QuantConfig(), data=empty, progress=False)
    with pytest.raises(ValueError, match="the calibration set is empty"):
        quantize(LeNet300(), QuantConfig(), data=[], progress=False)


def test_no_quantizable_layers():
    with pytest.raises(ValueError, match="quantize: the model has no layer with a weight matrix"):
        quantize(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), QuantConfig(activations="none"))
    with pytest.raises(ValueError, match="has no quantized Linear/Conv2d layers to convert"):
        convert(LeNet300())


def test_activation_quantization_needs_calibration():
    with pytest.raises(ValueError, match="activation quantization needs calibration data: pass data="):
        quantize(LeNet300(), QuantConfig())


def test_quantize_twice_is_refused():
    model = quantize(LeNet300(), QuantConfig(activations="none"))
    with pytest.raises(ValueError, match="already quantized"):
        quantize(model, QuantConfig(activations="none"))


def test_full_range_weights_and_activations_warn_of_int16_saturation(monkeypatch):
    from penjing.quantization import cpu

    monkeypatch.setattr(cpu, "has_vnni", lambda: False)  # an AVX2 CPU
    model = nn.Sequential(nn.Linear(8, 4))
    quantize(model, QuantConfig(reduce_range="none"), data=torch.rand(16, 8), progress=False)
    with pytest.warns(UserWarning, match="can saturate int16 sums on CPUs without VNNI"):
        convert(model)


def test_sixteen_bit_layers_stay_fake_quantized_and_say_why():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    quantize(model, QuantConfig(bits=8, layer_bits={"1": 16}, activations="none"))
    convert(model)
    assert isinstance(model[0], Int8Linear) and isinstance(model[1], nn.Linear)
    skipped = last_report(model).skipped
    assert [(s.name, s.reason) for s in skipped] == [
        ("1", "16-bit weights do not fit int8; it stays fake-quantized (float compute)")]


def test_sixteen_bit_activations_run_fake_quantized_and_convert_says_what_is_unsupported():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    x = torch.rand(8, 4)
    ref = model(x)
    quantize(model, QuantConfig(act_bits=16, reduce_range="none"), data=torch.rand(32, 4), progress=False)
    assert (model(x) - ref).norm() / ref.norm() < 0.02  # 8-bit weights, 16-bit activations
    with pytest.raises(ValueError, match=r"convert: no layer of Sequential can run on int8 kernels \(0: "
                       r"16-bit activations do not fit the x86 int8 kernels' u8 input"):
        convert(model)
    assert isinstance(model[0], nn.Linear)  # nothing swapped


def test_asymmetric_weights_and_same_padding_run_on_the_reference_backend():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding="same"), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 25, 3)).eval()
    quantize(model, QuantConfig(bits=6, symmetric=False), data=torch.rand(32, 2, 5, 5), progress=False)
    x = torch.rand(4, 2, 5, 5)
    fake = model(x)
    int8 = convert(copy.deepcopy(model))
    assert int8[0].backend == "reference" and int8[3].backend == "reference"
    assert torch.allclose(int8(x), fake, atol=1e-4)


def test_weight_only_conv_keeps_float_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2)).eval()
    quantize(model, QuantConfig(bits=8, activations="none"), progress=False)
    x = torch.randn(2, 3, 9, 9)
    fake = model(x)
    int8 = convert(copy.deepcopy(model))
    assert isinstance(int8[0], Int8Conv2d) and int8[0].mode == "weight"
    assert torch.allclose(int8(x), fake, rtol=0, atol=ULPS * float(fake.abs().max()))


def test_converted_model_saves_compactly_with_the_codec(tmp_path):
    codec = pytest.importorskip("penjing.codec")
    torch.manual_seed(0)
    model = convert(quantize(LeNet300().eval(), QuantConfig(), data=_calib((64,)), progress=False))
    info = codec.save(model, tmp_path / "int8.pjz")
    state = codec.load(tmp_path / "int8.pjz")
    assert state["fc1.weight"].dtype == torch.int8
    assert info.bytes < state_bytes(LeNet300()) / 3.5
    fresh = convert(quantize(LeNet300().eval(), QuantConfig(), data=_calib((64,), 8), progress=False))
    fresh.load_state_dict(state)
    x = torch.rand(3, 64)
    assert torch.equal(fresh(x), model(x))


def test_converted_int8_layers_are_rows_of_the_summary():
    from penjing.core.stats import layer_stats

    torch.manual_seed(0)
    model = LeNet5().eval()
    quantize(model, QuantConfig(), data=_calib((1, 8, 8)), progress=False)
    rows = {r.name: r for r in layer_stats(convert(model, graph=False))}
    assert list(rows) == ["conv1", "conv2", "fc1", "fc2"]
    assert rows["fc1"].type == "Int8Linear" and rows["conv1"].type == "Int8Conv2d"
    assert all(r.bits == 8 and r.bytes == r.params for r in rows.values())
