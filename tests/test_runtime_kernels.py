"""The runtime kernels against dense torch: every compiled variant the CPU runs and the
PyTorch fallback, on odd shapes, empty rows/columns, 0% .. 100% density, batch 1 and large,
non-contiguous inputs."""

from __future__ import annotations

import ctypes
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from penjing.runtime import build
from penjing.runtime.formats import SparseWeights
from penjing.runtime.modules import (
    BinaryLinear,
    CodebookLinear,
    SparseConv2d,
    SparseLinear,
    TernaryLinear,
)

VARIANTS = [*build.supported_variants(), "off"]


@pytest.fixture(params=VARIANTS)
def isa(request):
    """Run the test under one compiled variant (or the fallback), then restore the default."""
    got = build.reset(request.param)
    if request.param != "off" and got is None:
        pytest.skip(f"{request.param} kernels unavailable here")
    yield request.param
    build.reset(None)


def sparse(rows, cols, density, gen):
    w = torch.randn(rows, cols, generator=gen)
    w[torch.rand(rows, cols, generator=gen) >= density] = 0
    return w


def close(a, b, tol=1e-5):
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    assert a.shape == b.shape
    assert float((a - b).abs().max()) <= tol * scale if a.numel() else True


SHAPES = [(1, 1), (7, 13), (33, 65), (64, 300), (3, 70001)]  # 70001 columns: more than one panel
DENSITIES = [0.0, 0.001, 0.3, 1.0]


@pytest.mark.parametrize("rows,cols", SHAPES)
@pytest.mark.parametrize("density", DENSITIES)
def test_sparse_linear_f32(isa, rows, cols, density):
    gen = torch.Generator().manual_seed(rows * 7 + cols)
    w = sparse(rows, cols, density, gen)
    if rows > 2 and cols > 2:
        w[1] = 0  # an empty row
        w[:, 2] = 0  # an empty column
    bias = torch.randn(rows, generator=gen)
    layer = SparseLinear(SparseWeights.from_dense(w, codebook=False), bias)
    for batch in (1, 3, 70):
        x = torch.randn(batch, cols, generator=gen)
        close(layer(x), F.linear(x, w, bias))
    xt = torch.randn(cols, 9, generator=gen).t()  # non-contiguous
    close(layer(xt), F.linear(xt, w, bias))
    x3 = torch.randn(2, 4, cols, generator=gen)[:, ::2]  # strided, 3-D
    close(layer(x3), F.linear(x3, w, bias))


@pytest.mark.parametrize("centroids", [1, 2, 17, 32, 200])
@pytest.mark.parametrize("rows,cols", [(9, 31), (40, 130), (3, 5000)])
def test_codebook_linear(isa, centroids, rows, cols):
    gen = torch.Generator().manual_seed(centroids)
    book = torch.randn(centroids, generator=gen)
    w = sparse(rows, cols, 0.4, gen)
    nz = w != 0
    w[nz] = book[torch.randint(0, centroids, (int(nz.sum()),), generator=gen)]
    layer = SparseLinear(SparseWeights.from_dense(w))
    assert layer.weights.kind == "codebook"
    distinct = int(torch.unique(w[w != 0]).numel())
    assert layer.weights.code_bits == max(1, (distinct - 1).bit_length())
    for batch in (1, 2, 33):
        x = torch.randn(batch, cols, generator=gen)
        close(layer(x), F.linear(x, w))
    assert isinstance(CodebookLinear.from_linear(_linear(w)), CodebookLinear)


def _linear(w, bias=None):
    m = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    m.weight.data = w.clone()
    if bias is not None:
        m.bias.data = bias.clone()
    return m


@pytest.mark.parametrize("rows,cols", [(1, 3), (17, 40), (64, 1025)])
def test_sparse_linear_int8(isa, rows, cols):
    gen = torch.Generator().manual_seed(cols)
    q = torch.randint(-127, 128, (rows, cols), generator=gen).float()
    q[torch.rand(rows, cols, generator=gen) < 0.7] = 0
    scales = torch.rand(rows, generator=gen) + 0.01
    w = q * scales[:, None]
    layer = SparseLinear(SparseWeights.from_dense(w, int8_scales=scales))
    assert layer.weights.kind == "int8" and layer.weights.values.dtype == torch.int8
    for batch in (1, 4, 65):
        x = torch.randn(batch, cols, generator=gen)
        close(layer(x), F.linear(x, w))


def _int8_epilogue_reference(q, scales, bias, x):
    """(sum * scale) + bias with two fp32 roundings: ``x`` and ``q`` hold small integers, so
    the sums are exact in float64 and in the kernel alike; only the epilogue can differ."""
    sums = (x.double() @ q.double().T).float()
    return sums * scales + bias


@pytest.mark.parametrize("rows,cols", [(40, 300), (16, 72001)])
def test_int8_epilogue_is_two_roundings_bit_for_bit(isa, rows, cols):
    """The int8 kinds must requantize as fbgemm does, ``(sum * scale) + bias`` rounded twice;
    an fma (one rounding) moves about a third of these outputs by 1 ulp. Every batch tile
    (1..8 columns, the 8-wide and 16-wide tiles and their tails) and the direct conv."""
    gen = torch.Generator().manual_seed(rows + cols)
    q = torch.randint(-127, 128, (rows, cols), generator=gen).float()
    q[torch.rand(rows, cols, generator=gen) < 0.8] = 0
    scales = torch.rand(rows, generator=gen) * 0.01 + 1e-3
    bias = torch.randn(rows, generator=gen)
    layer = SparseLinear(SparseWeights.from_dense(q * scales[:, None], int8_scales=scales), bias)
    for batch in (1, 2, 3, 5, 7, 8, 9, 16, 19, 40):
        x = torch.randint(-60, 61, (batch, cols), generator=gen).float()
        got, want = layer(x), _int8_epilogue_reference(q, scales, bias, x)
        assert torch.equal(got, want), f"batch {batch}: {int((got != want).sum())} outputs differ"
    cin, k = 8, 3
    qc = q[:, : cin * k * k]
    conv = SparseConv2d(SparseWeights.from_dense(qc * scales[:, None], int8_scales=scales), bias, cin, (k, k),
                        padding=(1, 1))
    x = torch.randint(-60, 61, (2, cin, 9, 11), generator=gen).float()
    cols_of_x = F.unfold(x, k, padding=1).transpose(1, 2)  # [N, H*W, cin*k*k]
    want = _int8_epilogue_reference(qc, scales, bias, cols_of_x).transpose(1, 2).reshape(2, rows, 9, 11)
    got = conv(x)
    assert torch.equal(got, want), f"conv: {int((got != want).sum())} outputs differ"


@pytest.mark.parametrize("cols", [1, 15, 63, 64, 65, 130])
@pytest.mark.parametrize("zeros", [0.0, 0.4, 1.0])
def test_ternary_linear(isa, cols, zeros):
    gen = torch.Generator().manual_seed(cols)
    rows = 19
    codes = torch.randint(0, 2, (rows, cols), generator=gen) * 2 - 1
    codes[torch.rand(rows, cols, generator=gen) < zeros] = 0
    a, b = torch.rand(rows, generator=gen) + 0.1, torch.rand(rows, generator=gen) + 0.1
    w = torch.where(codes > 0, a[:, None], torch.where(codes < 0, -b[:, None], torch.zeros(())))
    bias = torch.randn(rows, generator=gen)
    layer = TernaryLinear.from_linear(_linear(w, bias))
    for batch in (1, 2, 70):
        x = torch.randn(batch, cols, generator=gen)
        close(layer(x), F.linear(x, w, bias))
    close(layer.dense_weight(), w, 0)


@pytest.mark.parametrize("rows,cols", [(1, 1), (16, 3), (19, 40), (70, 131)])
@pytest.mark.parametrize("scales", ["per-row symmetric", "per-tensor asymmetric"])
def test_ternary_table_lookup(isa, rows, cols, scales):
    """The scale layouts the table kernel takes (TWN: one alpha; TTQ: one Wp and one Wn)."""
    gen = torch.Generator().manual_seed(rows + cols)
    codes = torch.randint(-1, 2, (rows, cols), generator=gen)
    if scales == "per-row symmetric":
        a = b = torch.rand(rows, 1, generator=gen) + 0.1
    else:
        a, b = torch.tensor(0.7), torch.tensor(0.3)
    w = torch.where(codes > 0, a, torch.where(codes < 0, -b, torch.zeros(()))).expand(rows, cols).contiguous()
    layer = TernaryLinear.from_linear(_linear(w))
    assert layer.weights.lut_codes() is not None
    for batch in (1, 3):
        x = torch.randn(batch, cols, generator=gen)
        close(layer(x), F.linear(x, w))
    assert layer.bytes_per_call(3) == layer.weights.nbytes


@pytest.mark.parametrize("cols", [1, 17, 64, 200])
def test_binary_linear(isa, cols):
    gen = torch.Generator().manual_seed(cols)
    rows = 11
    alpha = torch.rand(rows, generator=gen) + 0.1
    w = torch.where(torch.rand(rows, cols, generator=gen) < 0.5, -1.0, 1.0) * alpha[:, None]
    layer = BinaryLinear.from_linear(_linear(w))
    assert not layer.weights.ternary
    for batch in (1, 5, 66):
        x = torch.randn(batch, cols, generator=gen)
        close(layer(x), F.linear(x, w))
    close(layer.dense_weight(), w, 0)


@pytest.mark.parametrize("k,stride,padding,dilation", [(3, 1, 1, 1), (3, 2, 0, 1), (1, 1, 0, 1), (3, 1, 2, 2),
                                                       (5, 1, 2, 1), (1, 2, 0, 1)])
@pytest.mark.parametrize("density", [0.0, 0.1, 1.0])
def test_sparse_conv2d(isa, k, stride, padding, dilation, density):
    gen = torch.Generator().manual_seed(k * 10 + stride)
    cin, cout = 5, 7
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation)
    conv.weight.data = sparse(cout, cin * k * k, density, gen).reshape(cout, cin, k, k)
    layer = SparseConv2d.from_conv(conv)
    with torch.no_grad():
        for batch, h, w in ((1, 11, 9), (3, 11, 9), (2, 20, 18)):  # 20 x 18: past the direct kernel's 16 x 16
            x = torch.randn(batch, cin, h, w, generator=gen)
            close(layer(x), conv(x))
        x = torch.randn(2, cin, 11, 9, generator=gen).to(memory_format=torch.channels_last)
        close(layer(x), conv(x))
    close(layer.dense_weight(), conv.weight.detach(), 0)


@pytest.mark.parametrize("cin,cout,groups,k,stride,padding", [(6, 9, 3, 3, 1, 1), (8, 8, 8, 3, 1, 1),
                                                              (8, 8, 8, 3, 2, 1), (6, 4, 2, 1, 1, 0),
                                                              (5, 10, 5, 5, 1, 2)])
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_grouped_sparse_conv2d(isa, cin, cout, groups, k, stride, padding, density):
    gen = torch.Generator().manual_seed(cin * 7 + groups)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, groups=groups)
    conv.weight.data = sparse(cout, cin // groups * k * k, density, gen).reshape(cout, cin // groups, k, k)
    layer = SparseConv2d.from_conv(conv)
    assert layer.weights.nnz == int(torch.count_nonzero(conv.weight))  # the other groups' blocks are skipped
    with torch.no_grad():
        for batch, h, w in ((1, 11, 9), (2, 20, 18)):
            x = torch.randn(batch, cin, h, w, generator=gen)
            close(layer(x), conv(x))
        x = torch.randn(2, cin, 9, 9, generator=gen)[:, :, 1:, ::2]  # not contiguous
        close(layer(x), conv(x))
    close(layer.dense_weight(), conv.weight.detach(), 0)


def test_groups_must_divide_the_channels():
    w = SparseWeights.from_dense(torch.eye(9, 54), codebook=False)
    with pytest.raises(ValueError, match=r"^groups=4 must divide in_channels=6 and out_channels=9$"):
        SparseConv2d(w, None, 6, (3, 3), groups=4)


def test_empty_batch(isa):
    w = sparse(6, 10, 0.5, torch.Generator().manual_seed(0))
    layer = SparseLinear(SparseWeights.from_dense(w, codebook=False))
    assert layer(torch.zeros(0, 10)).shape == (0, 6)


def test_sparse_mm_into_a_given_output(isa):
    from penjing.runtime import ops

    gen = torch.Generator().manual_seed(5)
    w = sparse(9, 13, 0.3, gen)
    sw = SparseWeights.from_dense(w, codebook=False)
    X = torch.randn(7, 13, generator=gen).t()  # [13, 7], not contiguous
    bias = torch.randn(9, generator=gen)
    out = torch.full((2, 9, 7), float("nan"))
    got = ops.sparse_mm_kn(sw, X, bias, out=out[1])
    assert got.data_ptr() == out[1].data_ptr()
    close(out[1], w @ X + bias[:, None])
    assert bool(out[0].isnan().all())  # nothing written outside the slice
    with pytest.raises(ValueError, match=r"^out must be a contiguous float32 \[9, 7\] tensor$"):
        ops.sparse_mm_kn(sw, X, bias, out=torch.empty(7, 9).t())


def test_input_gradient_runs_fallback():
    gen = torch.Generator().manual_seed(0)
    w = sparse(8, 12, 0.5, gen)
    layer = SparseLinear(SparseWeights.from_dense(w, codebook=False))
    x = torch.randn(3, 12, generator=gen, requires_grad=True)
    layer(x).sum().backward()
    close(x.grad, w.sum(0).expand(3, 12))
    # the conv writes each sample into its slice of one output: the gradient still flows
    conv = nn.Conv2d(6, 5, 1, bias=False)
    conv.weight.data = sparse(5, 6, 0.5, gen).reshape(5, 6, 1, 1)
    xc = torch.randn(2, 6, 3, 4, generator=gen, requires_grad=True)
    SparseConv2d.from_conv(conv)(xc).sum().backward()
    close(xc.grad, conv.weight.detach().sum(0).reshape(1, 6, 1, 1).expand(2, 6, 3, 4))


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 300), batch=st.integers(1, 80),
       density=st.sampled_from([0.0, 0.01, 0.2, 0.9, 1.0]), seed=st.integers(0, 1000),
       codebook=st.booleans())
def test_sparse_linear_property(rows, cols, batch, density, seed, codebook):
    gen = torch.Generator().manual_seed(seed)
    w = sparse(rows, cols, density, gen)
    if codebook:
        nz = w != 0
        w[nz] = torch.tensor([-0.5, 0.25, 1.5])[torch.randint(0, 3, (int(nz.sum()),), generator=gen)]
    layer = SparseLinear(SparseWeights.from_dense(w, codebook=codebook))
    x = torch.randn(batch, cols, generator=gen)
    close(layer(x), F.linear(x, w))


def test_layout_round_trip():
    gen = torch.Generator().manual_seed(3)
    w = sparse(9, 70000, 0.001, gen)
    sw = SparseWeights.from_dense(w, codebook=False)
    assert sw.panels == 2
    assert torch.equal(sw.to_dense(), w)
    assert sw.nbytes == 2 * sw.nnz + 4 * sw.nnz + 8 * (9 * 2 + 1)


# ---------------------------------------------------------------------------- bad input

def test_bad_inputs():
    w = sparse(4, 6, 0.5, torch.Generator().manual_seed(0))
    layer = SparseLinear(SparseWeights.from_dense(w, codebook=False))
    with pytest.raises(TypeError, match=r"^the runtime kernels take float32 inputs, got torch.float64$"):
        layer(torch.zeros(1, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^input has 5 features, the layer takes 6$"):
        layer(torch.zeros(1, 5))
    with pytest.raises(ValueError, match=r"^positions must be ascending flat indices inside the matrix$"):
        SparseWeights.from_positions(2, 2, [3, 1], values=torch.ones(2))
    with pytest.raises(ValueError, match=r"^a code points past the codebook$"):
        SparseWeights.from_positions(2, 2, [0, 1], codes=[0, 2], centroids=torch.ones(2))
    with pytest.raises(ValueError, match=r"^CodebookLinear needs codebook weights, got f32$"):
        CodebookLinear(SparseWeights.from_dense(w, codebook=False))
    with pytest.raises(ValueError, match=r"^the weight is not ternary \(each row must take only -b, 0, \+a\)$"):
        TernaryLinear.from_linear(_linear(torch.randn(3, 4)))
    with pytest.raises(ValueError, match=r"^the weight is not binary \(each row must take only -a, \+a\)$"):
        BinaryLinear.from_linear(_linear(torch.tensor([[1.0, 0.0]])))
    with pytest.raises(ValueError, match=r"^SparseConv2d takes zero padding given as numbers$"):
        SparseConv2d.from_conv(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match=r"^SparseConv2d takes zero padding given as numbers$"):
        SparseConv2d.from_conv(nn.Conv2d(4, 4, 3, padding="same"))
    with pytest.raises(ValueError, match=r"^int8 values need one scale per output channel$"):
        SparseWeights.from_positions(2, 2, [0], values=torch.ones(1, dtype=torch.int8))


def test_variant_choice_follows_cpu_flags(monkeypatch):
    monkeypatch.setattr(build.platform, "machine", lambda: "x86_64")
    assert build.supported_variants({"avx2", "fma", "f16c"}) == ["avx2", "generic"]
    assert build.supported_variants(set()) == ["generic"]
    full = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma", "f16c"}
    assert build.supported_variants(full) == ["avx512", "avx2", "generic"]
    monkeypatch.setattr(build.platform, "machine", lambda: "aarch64")
    assert build.supported_variants(full) == ["generic"]


def test_disabled_kernels_warn_once_and_fall_back(monkeypatch):
    monkeypatch.setenv("PENJING_KERNELS", "off")
    monkeypatch.setattr(build, "_cached", None)
    monkeypatch.setattr(build, "_warned", False)
    with pytest.warns(RuntimeWarning, match="compiled kernels unavailable \\(PENJING_KERNELS=off\\)"):
        assert build.kernels() is None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build.kernels() is None  # no second warning
    w = sparse(4, 6, 0.5, torch.Generator().manual_seed(0))
    x = torch.randn(2, 6)
    close(SparseLinear(SparseWeights.from_dense(w, codebook=False))(x), F.linear(x, w))
    monkeypatch.setattr(build, "_cached", None)


def test_unsupported_variant_is_refused():
    with pytest.raises(build.KernelsUnavailable, match=r"^instruction set 'sse9' is not supported by this CPU"):
        build.build("sse9")


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_give_the_same_result(threads, monkeypatch):
    """The pool splits rows between threads; each row is summed by one thread, so the result
    is the same to the bit as on one thread."""
    from penjing.runtime import ops

    monkeypatch.setattr(ops, "MIN_WORK_PER_THREAD", 1)  # every call splits, however small
    gen = torch.Generator().manual_seed(threads)
    w = sparse(300, 500, 0.5, gen)
    t = torch.randint(-1, 2, (300, 500), generator=gen).float() * 0.5
    layers = [SparseLinear(SparseWeights.from_dense(w, codebook=False)), TernaryLinear.from_linear(_linear(t))]
    conv = nn.Conv2d(16, 24, 3, padding=1)
    conv.weight.data = sparse(24, 16 * 9, 0.5, gen).reshape(24, 16, 3, 3)
    layers.append(SparseConv2d.from_conv(conv))
    inputs = [torch.randn(1, 500), torch.randn(40, 500), torch.randn(1, 500), torch.randn(40, 500),
              torch.randn(2, 16, 12, 12)]
    pairs = [(layers[0], inputs[0]), (layers[0], inputs[1]), (layers[1], inputs[2]), (layers[1], inputs[3]),
             (layers[2], inputs[4])]
    before = torch.get_num_threads()
    try:
        with torch.no_grad():
            for layer, x in pairs:
                torch.set_num_threads(1)
                one = layer(x)
                torch.set_num_threads(threads)
                many = layer(x)
                assert torch.equal(one, many)
        a = torch.ones(3 * 4096 + 5)
        assert ops.read_probe(a) == a.numel()
    finally:
        torch.set_num_threads(before)


def test_calls_from_two_python_threads_at_once(monkeypatch):
    """ctypes releases the GIL: two Python threads may be inside the kernels together; the
    second runs its call on its own thread while the first holds the pool, and both results
    are the one-thread result to the bit."""
    import threading

    from penjing.runtime import ops

    monkeypatch.setattr(ops, "MIN_WORK_PER_THREAD", 1)  # every call wants the pool
    gen = torch.Generator().manual_seed(11)
    w = sparse(700, 900, 0.3, gen)
    layer = SparseLinear(SparseWeights.from_dense(w, codebook=False))
    xs = [torch.randn(1, 900, generator=gen), torch.randn(17, 900, generator=gen)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.no_grad():
            want = [layer(x) for x in xs]
        torch.set_num_threads(2)
        bad = []

        def work(x, ref):
            with torch.no_grad():
                for _ in range(150):
                    if not torch.equal(layer(x), ref):
                        bad.append(1)

        threads = [threading.Thread(target=work, args=(x, ref)) for x, ref in zip(xs, want, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not bad
    finally:
        torch.set_num_threads(before)


def test_reading_weight_decodes_the_dense_weight_each_time():
    """Code that reads ``layer.weight`` (Hugging Face's ``.weight.dtype`` checks) gets the true
    dense values, decoded per read: nothing dense is kept on the layer."""
    gen = torch.Generator().manual_seed(3)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    conv.weight.data = sparse(6, 36, 0.2, gen).reshape(6, 4, 3, 3)
    layer = SparseConv2d.from_conv(conv)
    assert layer.weight.dtype == torch.float32 and torch.equal(layer.weight, conv.weight.detach())
    assert layer.weight is not layer.weight and "weight" not in dict(layer.named_buffers())
    linear = SparseLinear.from_linear(_linear(sparse(5, 7, 0.3, gen)))
    assert torch.equal(linear.weight, linear.dense_weight()) and linear.weight.shape == (5, 7)


def test_kernels_join_torchs_openmp_team_only_when_they_share_its_runtime(monkeypatch):
    """Bound to the OpenMP runtime torch uses (the library's libgomp.so.1 resolves to the one
    torch loaded: the same omp_get_max_threads) the kernels run on torch's team; bound to
    another, or with PENJING_THREADS=pool, on their own threads. A second runtime elsewhere
    in the process (scikit-learn vendors one) changes nothing."""
    k = build.kernels()
    if k is None:
        pytest.skip("compiled kernels unavailable")
    if not hasattr(k.lib, f"pj_set_openmp_{k.isa}"):
        pytest.skip("the compiler here has no OpenMP: the kernels always use their own pool")
    ours = getattr(k.lib, f"pj_openmp_symbol_{k.isa}")
    ours.restype = ctypes.c_void_p
    assert build.torch_openmp_symbol() is not None and ours() == build.torch_openmp_symbol()
    forced = os.environ.get("PENJING_THREADS", "").lower() == "pool"
    assert k.threading == ("pool" if forced else "openmp")
    monkeypatch.delenv("PENJING_THREADS", raising=False)
    try:
        monkeypatch.setattr(build, "torch_openmp_symbol", lambda: 12345)  # torch bound elsewhere
        assert build.threading_mode(k.lib, k.isa) == "pool"
        monkeypatch.undo()
        monkeypatch.delenv("PENJING_THREADS", raising=False)
        assert build.threading_mode(k.lib, k.isa) == "openmp"
        monkeypatch.setenv("PENJING_THREADS", "pool")
        assert build.threading_mode(k.lib, k.isa) == "pool"
    finally:
        monkeypatch.undo()
        build.threading_mode(k.lib, k.isa)  # back to what this process has


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_runs_the_kernels_on_their_own_pool(monkeypatch):
    """GNU OpenMP's team does not survive fork: a child's first parallel region would wait
    forever for threads that are gone. After a fork the kernels switch to their own pool (a
    child that calls torch's own parallel ops still hangs in those, as plain torch does)."""
    import time

    import numpy as np

    from penjing.runtime import ops

    k = build.kernels()
    if k is None or k.threading != "openmp":
        pytest.skip("the kernels do not run on torch's OpenMP team here")
    monkeypatch.setattr(ops, "MIN_WORK_PER_THREAD", 1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = torch.Generator().manual_seed(5)
        w = SparseWeights.from_dense(sparse(300, 400, 0.3, gen), codebook=False)
        X = torch.randn(400, 24, generator=gen)
        want = ops.sparse_mm_kn(w, X, None).numpy().copy()  # the parent's team now exists
        pid = os.fork()
        if pid == 0:  # the child: only the kernel and numpy, nothing of torch's that goes parallel
            code = 3
            try:
                got = ops.sparse_mm_kn(w, X, None).numpy()
                code = 0 if (k.threading == "pool" and np.array_equal(got, want)) else 4
            finally:
                os._exit(code)
        deadline = time.time() + 30
        while time.time() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.02)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child's kernel call hung")
        assert os.waitstatus_to_exitcode(status) == 0
        assert k.threading == "openmp"  # the parent keeps torch's team
    finally:
        torch.set_num_threads(before)
