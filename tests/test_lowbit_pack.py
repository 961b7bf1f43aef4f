"""Packed storage (1-bit, 2-bit, entropy-coded), exact decoding, and the multiplication-free
ternary Linear."""

from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import penjing as pj
from penjing.lowbit import (
    BinaryConfig,
    TernaryConfig,
    TernaryLinear,
    binarize,
    decode_ternary_entropy,
    encode_ternary_entropy,
    entropy_bits_per_weight,
    pack,
    pack_bits,
    pack_ternary,
    packed_bytes,
    ternarize,
    to_multiplication_free,
    unpack,
    unpack_bits,
    unpack_ternary,
)
from penjing.lowbit.mulfree import dense_reference
from penjing.lowbit.report import storage


@settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), max_size=70))
def test_bits_round_trip_at_one_bit_per_weight(values):
    bits = torch.tensor(values, dtype=torch.bool)
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(len(values) / 8)
    assert torch.equal(unpack_bits(packed, len(values)), bits)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([-1, 0, 1]), max_size=70))
def test_ternary_round_trips_at_two_bits_and_entropy_coded(values):
    codes = torch.tensor(values, dtype=torch.int8)
    packed = pack_ternary(codes)
    assert packed.numel() == math.ceil(len(values) / 4)
    assert torch.equal(unpack_ternary(packed, len(values)), codes)
    assert torch.equal(decode_ternary_entropy(encode_ternary_entropy(codes), len(values)), codes)


def test_entropy_coding_beats_two_bits_on_sparse_ternary_codes():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(100_000, generator=g)
    codes = torch.where(r < 0.15, 1, torch.where(r < 0.3, -1, 0)).to(torch.int8)  # 70% zeros
    coded = encode_ternary_entropy(codes)
    bits = 8 * coded.numel() / codes.numel()
    h = entropy_bits_per_weight(codes)
    assert h == pytest.approx(1.18, abs=0.01)
    assert h <= bits < 1.45  # below 2-bit packing, above the Shannon bound
    assert torch.equal(decode_ternary_entropy(coded, codes.numel()), codes)


def test_bad_packed_lengths_and_codes_are_errors():
    with pytest.raises(ValueError, match="binary data holds 2 bytes; 20 weights need 3"):
        unpack_bits(torch.zeros(2, dtype=torch.uint8), 20)
    with pytest.raises(ValueError, match="ternary data holds 2 bytes; 20 weights need 5"):
        unpack_ternary(torch.zeros(2, dtype=torch.uint8), 20)
    with pytest.raises(ValueError, match="2-bit code 3 does not exist"):
        unpack_ternary(torch.tensor([0b11], dtype=torch.uint8), 1)
    with pytest.raises(ValueError, match="ternary codes must be in"):
        pack_ternary(torch.tensor([2]))
    with pytest.raises(ValueError, match="corrupt entropy-coded ternary data"):
        decode_ternary_entropy(b"not zlib", 10)
    coded = encode_ternary_entropy(torch.zeros(100, dtype=torch.int8))
    with pytest.raises(ValueError, match="decodes to 20 symbols; 500 weights need exactly 100"):
        decode_ternary_entropy(coded, 500)
    with pytest.raises(ValueError, match="non-negative int"):
        unpack_bits(torch.zeros(1, dtype=torch.uint8), -3)


CONFIGS = {
    "ttq": lambda m: ternarize(m, TernaryConfig("ttq")),
    "twn": lambda m: ternarize(m, TernaryConfig("twn")),
    "binaryconnect": lambda m: binarize(m, BinaryConfig("binaryconnect")),
    "xnor": lambda m: binarize(m, BinaryConfig("xnor")),
    "xnor-tensor": lambda m: binarize(m, BinaryConfig("xnor", scaling="tensor")),
}


@pytest.mark.parametrize("entropy", [False, True], ids=["packed", "entropy"])
@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_packed_model_decodes_bit_exactly_and_loads_without_pickle(method, entropy):
    torch.manual_seed(0)
    model = pj.models.LeNet5()
    CONFIGS[method](model)
    with torch.no_grad():  # make TTQ scales differ from their init, as after training
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    buffer = io.BytesIO()
    torch.save(pack(model, entropy=entropy), buffer)
    buffer.seek(0)
    state = unpack(torch.load(buffer, weights_only=True))
    for name in ("conv2", "fc1"):
        assert torch.equal(state[f"{name}.weight"], getattr(model, name).weight)
    fresh = pj.models.LeNet5().eval()
    fresh.load_state_dict(state)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(fresh(x), model(x))


def test_storage_ratios_are_16x_for_ternary_and_32x_for_binary_codes():
    model = pj.models.LeNet5()
    ternarize(model, TernaryConfig("ttq"))
    state = pack(model)
    n = 9000 + 100_000
    assert packed_bytes(state)["codes"] == math.ceil(9000 / 4) + 100_000 // 4  # 2 bits each
    assert storage(model).lowbit_ratio == pytest.approx(4 * n / (n / 4 + 16), rel=1e-3)  # ~16x
    model = pj.models.LeNet5()
    binarize(model, BinaryConfig("binaryconnect"))
    assert packed_bytes(binarize(pj.models.LeNet5(), BinaryConfig("binaryconnect")) and pack(model))["codes"] \
        == math.ceil(9000 / 8) + 100_000 // 8
    assert storage(model).lowbit_ratio == pytest.approx(32.0, rel=1e-3)


def test_tampered_pack_is_refused():
    model = pj.models.LeNet5()
    ternarize(model, TernaryConfig("twn"))
    state = pack(model)
    state["layers"]["fc1"]["shape"] = [500, 201]
    with pytest.raises(ValueError, match="ternary data holds 25000 bytes; 100500 weights need 25125"):
        unpack(state)
    state = pack(model)
    state["layers"]["fc1"]["wp"] = torch.tensor([float("nan")])
    with pytest.raises(ValueError, match="layer 'fc1': wp is not finite"):
        unpack(state)
    state["layers"]["fc1"]["shape"] = [-1]
    with pytest.raises(ValueError, match="layer 'fc1': bad shape"):
        unpack(state)
    with pytest.raises(ValueError, match="not a penjing low-bit pack"):
        unpack({"format": "other"})


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
