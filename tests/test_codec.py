"""The codec: Huffman, tensor codecs and the .pjz file round-trip bit for bit."""

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from penjing.codec import encode_tensor, huffman, inspect, load, save
from penjing.codec.bits import Reader, pack, unpack
from penjing.codec.dtypes import to_bits
from penjing.codec.huffman import _lengths_unlimited
from penjing.codec.streams import StreamPlan, read_stream
from penjing.codec.tensors import decode_tensor, positions_from_runs, runs_from_positions

torch.set_num_threads(1)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(to_bits(a), to_bits(b))


# ---------------------------------------------------------------------------- Huffman

@FAST
@given(st.lists(st.integers(0, 40), min_size=1, max_size=3000), st.integers(1, 5000))
def test_huffman_round_trip_and_entropy_bound(symbols, block):
    x = np.array(symbols)
    counts = np.bincount(x)
    lengths = huffman.code_lengths(counts)
    data, offsets, total = huffman.encode(x, lengths, min(block, len(x)))
    assert np.array_equal(huffman.decode(data, len(x), lengths, min(block, len(x)), offsets, total), x)
    p = counts[counts > 0] / len(x)
    entropy = float(-(p * np.log2(p)).sum())
    # Huffman: H <= L < H + 1 (L = H + 1 exactly only for a one-symbol stream)
    assert entropy - 1e-9 <= total / len(x) <= entropy + 1


def test_huffman_is_close_to_entropy_on_a_skewed_large_stream():
    rng = np.random.default_rng(0)
    x = rng.geometric(0.25, size=200_000).clip(max=31)
    counts = np.bincount(x)
    lengths = huffman.code_lengths(counts)
    assert lengths.max() <= huffman.MAX_LEN
    data, offsets, total = huffman.encode(x, lengths, huffman.block_size(len(x)))
    p = counts[counts > 0] / len(x)
    assert total / len(x) < float(-(p * np.log2(p)).sum()) + 0.05
    assert np.array_equal(huffman.decode(data, len(x), lengths, huffman.block_size(len(x)), offsets, total), x)


def test_huffman_lengths_are_limited_on_fibonacci_counts():
    fib = [1, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    lengths = huffman.code_lengths(np.array(fib))
    assert lengths.max() <= huffman.MAX_LEN and huffman.kraft_ok(lengths)
    assert _lengths_unlimited(np.array(fib)).max() == 29  # what the limit prevented


@FAST
@given(st.lists(st.integers(0, 2**12 - 1), max_size=500), st.booleans())
def test_streams_round_trip(symbols, use_huffman):
    x = np.array(symbols, dtype=np.int64)
    plan = StreamPlan(x, 12, use_huffman)
    data, parts = plan.encode()
    assert len(data) == parts.data + parts.table
    assert abs(len(data) - plan.nbytes) <= 4 * (len(x) // 1024 + 1)  # the size estimate is close
    out, _ = read_stream(Reader(data), len(x))
    assert np.array_equal(out, x)


@FAST
@given(st.lists(st.integers(0, 2**20), max_size=200), st.integers(1, 40))
def test_fixed_width_packing(values, extra):
    width = max(values, default=0).bit_length() + extra % 3
    x = np.array(values, dtype=np.uint64)
    assert np.array_equal(unpack(pack(x, width), len(x), width), x) if width else True


# ---------------------------------------------------------------------------- sparse index

def test_relative_index_with_fillers_matches_the_paper_example():
    """Deep Compression Fig. 2 with 3-bit indices: a gap of 8 zeros needs a filler."""
    positions = np.array([1, 4, 13, 14])
    runs = runs_from_positions(positions, 15, width=3)
    assert runs.tolist() == [1, 2, 7, 1, 0]  # 7 = filler (7 zeros, no value), then 1 more zero
    assert positions_from_runs(runs, 3, 15, "t").tolist() == positions.tolist()


@FAST
@given(st.integers(0, 3000), st.floats(0, 1), st.integers(1, 8), st.integers(0, 2**31))
def test_relative_index_round_trip(numel, density, width, seed):
    rng = np.random.default_rng(seed)
    positions = np.flatnonzero(rng.random(numel) < density)
    runs = runs_from_positions(positions, numel, width)
    assert runs.max(initial=0) < 2 ** width
    assert positions_from_runs(runs, width, numel, "t").tolist() == positions.tolist()


# ---------------------------------------------------------------------------- tensors

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8,
          torch.int16, torch.int32, torch.int64, torch.bool]


@st.composite
def tensors(draw):
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.integers(0, 12), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31))
    sparsity = draw(st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]))
    distinct = draw(st.sampled_from([None, 1, 2, 5, 32, 300]))
    g = torch.Generator().manual_seed(seed)
    n = math.prod(shape)
    if dtype.is_floating_point:
        base = torch.randn(n, generator=g, dtype=torch.float64)
        if distinct:
            base = torch.linspace(-1, 1, distinct, dtype=torch.float64)[torch.randint(0, distinct, (n,), generator=g)]
        t = base.to(dtype)
    elif dtype == torch.bool:
        t = torch.rand(n, generator=g) < 0.5
    else:
        info = torch.iinfo(dtype)
        t = torch.randint(max(info.min, -1000), min(info.max, 1000), (n,), generator=g).to(dtype)
    t = t.clone()
    t[torch.rand(n, generator=g) < sparsity] = 0
    return t.reshape(shape)


@FAST
@given(tensors(), st.sampled_from([None, 1, 2, 5, 8]), st.booleans(), st.sampled_from([None, 2, 5, 8]))
def test_tensor_round_trip_is_bit_identical(t, index_bits, use_huffman, hint_bits):
    hint = {"codebook_bits": hint_bits} if hint_bits else None
    enc = encode_tensor(t, hint=hint, huffman=use_huffman, index_bits=index_bits)
    out, parts = decode_tensor(enc.codec, enc.payload, t.dtype, tuple(t.shape), "t")
    assert same_bits(out, t)
    assert sum(parts.values()) == len(enc.payload) == sum(enc.parts.values())
    assert len(enc.payload) <= t.numel() * t.element_size()  # never worse than raw


@pytest.mark.parametrize("numel", [0, 1, 31, 32, 5000])
def test_all_zero_and_empty_tensors(numel):
    t = torch.zeros(numel)
    enc = encode_tensor(t, index_bits=5)
    out, _ = decode_tensor(enc.codec, enc.payload, t.dtype, (numel,), "t")
    assert same_bits(out, t)
    if numel >= 32:
        assert enc.name in ("sparse-raw", "sparse-codebook") and len(enc.payload) < 4 * numel / 20


def test_gaps_longer_than_the_index_width():
    t = torch.zeros(10_000)
    t[[0, 300, 301, 9000]] = torch.tensor([1.5, -2.0, 1.5, 7.0])
    for width in (1, 2, 5, 8):
        enc = encode_tensor(t, index_bits=width)
        assert enc.name.startswith("sparse")
        assert same_bits(decode_tensor(enc.codec, enc.payload, t.dtype, (10_000,), "t")[0], t)


def test_negative_zero_and_nan_survive():
    t = torch.tensor([0.0, -0.0, float("nan"), 1.0, 0.0, float("-inf")])
    enc = encode_tensor(t)
    assert same_bits(decode_tensor(enc.codec, enc.payload, t.dtype, (6,), "t")[0], t)


def test_few_distinct_values_become_a_codebook_without_hints():
    t = torch.linspace(-1, 1, 16)[torch.randint(0, 16, (100, 100))]
    t[torch.rand(100, 100) < 0.9] = 0
    enc = encode_tensor(t)
    assert enc.name == "sparse-codebook"
    assert len(enc.payload) < 0.1 * t.numel() * 4


def test_affine_hint_exact_and_inexact():
    scale = torch.tensor([0.5, 0.25, 2.0 ** -6])
    q = torch.randint(-8, 8, (3, 40)).float()
    w = q * scale[:, None]
    hint = {"affine": {"bits": 4, "scale": scale, "zero_point": torch.zeros(3), "axis": 0}}
    enc = encode_tensor(w, hint=hint, huffman=False)
    assert enc.name == "affine"
    assert len(enc.payload) <= 3 * 40 * 4 / 8 + 40  # 4 bits per weight plus small parameters
    assert same_bits(decode_tensor(enc.codec, enc.payload, w.dtype, (3, 40), "t")[0], w)
    noisy = w + 1e-3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc = encode_tensor(noisy, hint=hint)
    assert enc.name != "affine"
    assert any("does not reproduce the weights bit for bit" in str(c.message) for c in caught)
    assert same_bits(decode_tensor(enc.codec, enc.payload, w.dtype, (3, 40), "t")[0], noisy)


def test_unsupported_dtype_is_refused_clearly():
    with pytest.raises(ValueError, match="cannot store dtype torch.complex64"):
        encode_tensor(torch.zeros(2, dtype=torch.complex64))


# ---------------------------------------------------------------------------- the file

class _Affine(nn.Module):
    """A stand-in quantizer following the hint protocol: w = (q - z) * s per output channel."""

    def __init__(self, bits=4):
        super().__init__()
        self.bits = bits

    def _params(self, v):
        s = v.detach().abs().amax(1) / (2 ** (self.bits - 1) - 1)
        return 2.0 ** torch.ceil(torch.log2(s))  # power-of-two scales: exact products

    def forward(self, v):
        s = self._params(v)[:, None]
        return torch.clamp(torch.round(v / s), -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1) * s

    def codec_hint(self, v):
        return {"affine": {"bits": self.bits, "scale": self._params(v), "zero_point": torch.tensor(0.0),
                           "axis": 0}}


def test_model_round_trip_with_hints(tmp_path):
    from penjing.core.params import attach
    from penjing.models import LeNet5
    from penjing.sharing import ShareConfig, share

    torch.manual_seed(0)
    model = LeNet5()
    with torch.no_grad():
        model.fc1.weight[model.fc1.weight.abs() < 0.06] = 0  # 85% sparse
    share(model, ShareConfig(layers=["fc1", "conv2"]))
    attach(model.fc2, _Affine())
    model.register_buffer("step", torch.tensor(7, dtype=torch.int64))
    x = torch.randn(4, 1, 8, 8)
    expected = model(x)
    info = save(model, tmp_path / "m.pjz")
    assert info.bytes == (tmp_path / "m.pjz").stat().st_size
    assert {t.name: t.codec for t in info.tensors}["fc2.weight"] == "affine"
    assert {t.name: t.codec for t in info.tensors}["fc1.weight"] == "sparse-codebook"
    assert {t.name: t.codec for t in info.tensors}["conv2.weight"] == "codebook"
    state = load(tmp_path / "m.pjz")
    assert torch.equal(model(x), expected)  # saving did not touch the model
    plain = LeNet5()
    plain.register_buffer("step", torch.tensor(0))
    plain.load_state_dict(state)
    assert torch.equal(plain(x), expected)
    assert int(state["step"]) == 7
    again = inspect(tmp_path / "m.pjz")
    assert [(t.name, t.codec, t.parts) for t in again.tensors] == [(t.name, t.codec, t.parts) for t in info.tensors]
    assert sum(t.total for t in again.tensors) + again.overhead == again.bytes


def test_save_refuses_what_it_cannot_store(tmp_path):
    with pytest.raises(TypeError, match="needs an nn.Module or a state_dict"):
        save([1, 2], tmp_path / "x.pjz")
    with pytest.raises(TypeError, match="state_dict of str -> Tensor"):
        save({"a": 3}, tmp_path / "x.pjz")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.pjz")


def test_hint_protocol_no_argument_hints_and_last_one_wins():
    from torch.nn.utils import parametrize

    from penjing.codec import collect_hints

    class Sign(nn.Module):  # values in {-1, +1}: a 1-bit codebook, asked without the value
        def forward(self, v):
            return torch.where(v >= 0, 1.0, -1.0)

        def codec_hint(self):
            return {"codebook_bits": 1}

    class Half(nn.Module):  # then halved: {-0.5, 0.5} = (q - 0.5) * 1.0 for q in {0, 1}
        def forward(self, v):
            return v * 0.5

        def codec_hint(self, v):
            return {"affine": {"bits": 1, "scale": torch.tensor(1.0), "zero_point": torch.tensor(0.5),
                               "axis": None}}

    layer = nn.Linear(6, 4)
    parametrize.register_parametrization(layer, "weight", Sign())
    assert collect_hints(layer) == {"weight": {"codebook_bits": 1}}
    parametrize.register_parametrization(layer, "weight", Half())
    hints = collect_hints(layer)
    assert list(hints["weight"]) == ["affine"]  # the outer hint replaces the inner one
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the affine hint is exact: no fallback warning
        enc = encode_tensor(layer.weight.detach(), hint=hints["weight"], huffman=False)
    # 1 bit per weight either way; the two-entry codebook is a few bytes smaller than the
    # affine parameters here, and the smallest codec wins
    assert enc.name in ("affine", "codebook") and len(enc.payload) < 20
    out, _ = decode_tensor(enc.codec, enc.payload, torch.float32, (4, 6), "w")
    assert torch.equal(out, layer.weight.detach())
