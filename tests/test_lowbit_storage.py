"""Binary/ternary storage through the one .pjz codec (bit-exact round trips, 1 and 2 bits per
weight), XNOR scaling on ConvTranspose2d's (in, out) layout, and the multiplication-free
ternary Linear."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import penjing as pj
from penjing.lowbit import (
    BinaryConfig,
    TernaryConfig,
    TernaryLinear,
    binarize,
    ternarize,
    to_multiplication_free,
)
from penjing.lowbit.mulfree import dense_reference
from penjing.lowbit.report import storage

CONFIGS = {
    "ttq": lambda m: ternarize(m, TernaryConfig("ttq")),
    "twn": lambda m: ternarize(m, TernaryConfig("twn")),
    "binaryconnect": lambda m: binarize(m, BinaryConfig("binaryconnect")),
    "xnor": lambda m: binarize(m, BinaryConfig("xnor")),
    "xnor-tensor": lambda m: binarize(m, BinaryConfig("xnor", scaling="tensor")),
}


def test_storage_figures_are_the_codec_payloads_and_near_one_and_two_bits(tmp_path):
    model = pj.models.LeNet5()
    ternarize(model, TernaryConfig("ttq"))
    size = storage(model)
    info = pj.save(model, tmp_path / "t.pjz")
    for row in size.layers:  # the report's bytes are exactly what the file holds
        assert row.packed_bytes == info[f"{row.name}.weight"].payload
    assert size.packed_bytes == sum(t.payload for t in info.tensors)
    n = 9000 + 100_000  # conv2 + fc1
    assert {r.name: r.params for r in size.layers} == {"conv2": 9000, "fc1": 100_000}
    # a 3-value codebook: at most 2 bits per weight plus tables (Huffman usually below that)
    assert sum(r.packed_bytes for r in size.layers) <= n * 2 / 8 + 200
    model = pj.models.LeNet5()
    binarize(model, BinaryConfig("binaryconnect"))
    size = storage(model)
    assert sum(r.packed_bytes for r in size.layers) <= n / 8 + 200  # one bit per weight
    assert size.lowbit_ratio > 30


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_saved_model_loads_bit_exactly_into_a_fresh_model(method, tmp_path):
    torch.manual_seed(0)
    model = pj.models.LeNet5()
    CONFIGS[method](model)
    with torch.no_grad():  # make TTQ scales differ from their init, as after training
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    pj.save(model, tmp_path / "m.pjz")
    fresh = pj.models.LeNet5().eval()
    fresh.load_state_dict(pj.load(tmp_path / "m.pjz"))
    for name in ("conv2", "fc1"):
        assert torch.equal(getattr(fresh, name).weight, getattr(model, name).weight)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(fresh(x), model(x))


def test_xnor_on_conv_transpose_scales_each_output_channel_of_its_in_out_layout(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(3, 5, 2, bias=False))
    v = model[0].weight.detach().clone()  # (in=3, out=5, 2, 2)
    binarize(model, BinaryConfig("xnor", keep_first_last=False, clip=False))
    w = model[0].weight.detach()
    for o in range(5):  # by hand: alpha_o = mean |V[:, o]| over the 3 x 2 x 2 weights of output o
        alpha = sum(abs(float(v[i, o, a, b])) for i in range(3) for a in range(2) for b in range(2)) / 12
        expected = torch.where(v[:, o] >= 0, alpha, -alpha)
        assert torch.allclose(w[:, o], expected, rtol=1e-6, atol=0)
    # the 1-bit affine hint runs along the same axis and the file gives it back exactly
    hint = model[0].parametrizations.weight[0].codec_hint(model[0].parametrizations.weight.original)
    assert hint["affine"]["axis"] == 1 and hint["affine"]["scale"].numel() == 5
    info = pj.save(model, tmp_path / "ct.pjz")
    assert info["0.weight"].codec == "affine"
    assert torch.equal(pj.load(tmp_path / "ct.pjz")["0.weight"], w)


# --- multiplication-free ternary Linear ------------------------------------------------------

def test_multiplication_free_linear_equals_the_dense_product():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(-1, 2, (30, 50), generator=g)
    layer = TernaryLinear.from_codes(codes, torch.tensor(0.3), torch.tensor(0.2), torch.randn(30, generator=g))
    assert torch.equal(layer.dense_weight(), torch.where(codes > 0, 0.3, torch.where(codes < 0, -0.2, 0.0)))
    x = torch.randn(7, 4, 50, generator=g, dtype=torch.float64)
    layer64 = TernaryLinear.from_codes(codes, torch.tensor(0.3, dtype=torch.float64),
                                       torch.tensor(0.2, dtype=torch.float64), layer.bias.double())
    assert torch.allclose(layer64(x), dense_reference(layer64, x), rtol=1e-12, atol=1e-12)
    x32 = x.float()
    assert torch.allclose(layer(x32), dense_reference(layer, x32), atol=1e-5)


def test_to_multiplication_free_keeps_the_model_output():
    torch.manual_seed(0)
    model = pj.models.LeNet300()
    ternarize(model, TernaryConfig("ttq", keep_first_last=False))
    model.eval()
    x = torch.rand(16, 64)
    expected = model(x)
    to_multiplication_free(model)
    assert isinstance(model.fc1, TernaryLinear) and isinstance(model.fc3, TernaryLinear)
    assert torch.allclose(model(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="no ternarized Linear layer"):
        to_multiplication_free(nn.Sequential(nn.Linear(2, 2)))


# --- the compressed file (penjing.save / penjing.load) through the codec hint protocol -----

@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_compressed_file_round_trip_uses_the_hints_and_is_bit_exact(method, tmp_path):
    torch.manual_seed(0)
    model = pj.models.LeNet5()
    CONFIGS[method](model)
    info = pj.save(model, tmp_path / "m.pjz")
    state = pj.load(tmp_path / "m.pjz")
    for name in ("conv2", "fc1"):
        assert torch.equal(state[f"{name}.weight"], getattr(model, name).weight)
    fc1 = info["fc1.weight"]
    expected = {"xnor": "affine"}.get(method, "codebook")
    assert expected in fc1.codec
    bits = 1 if method in ("binaryconnect", "xnor", "xnor-tensor") else 2
    assert fc1.parts["indices"] <= 100_000 * bits / 8  # at most 1 or 2 bits per weight


def test_xnor_hint_is_the_exact_one_bit_affine_form():
    layer = nn.Linear(3, 2)
    binarize(layer, BinaryConfig("xnor", keep_first_last=False))
    p = layer.parametrizations.weight[0]
    v = layer.parametrizations.weight.original
    hint = p.codec_hint(v)["affine"]
    alpha = v.abs().mean(1)
    assert hint["bits"] == 1 and hint["axis"] == 0 and torch.equal(hint["scale"], 2 * alpha)
    q = (v >= 0).float()
    w = (q - hint["zero_point"]) * hint["scale"].reshape(-1, 1)
    assert torch.equal(w, layer.weight)
    with torch.no_grad():
        v[0].zero_()
    assert p.codec_hint(v) == {}  # a zero channel has no 1-bit affine form: no hint
