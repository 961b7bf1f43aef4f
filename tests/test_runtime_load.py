"""``pj.load(path, model, runtime=...)``: compressed layers run from the .pjz's stored form."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import penjing as pj
from penjing.codec import load_stored
from penjing.codec.tensors import StoredSparse
from penjing.runtime import (
    CodebookLinear,
    SparseConv2d,
    SparseLinear,
    TernaryLinear,
    load_into,
)
from penjing.runtime.load import densify
from penjing.runtime.report import bandwidth_probe, format_report, speed_report


def mlp():
    return nn.Sequential(nn.Linear(40, 96), nn.ReLU(), nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 10))


def cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8 * 36, 5))


def rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture
def deep_compressed(tmp_path):
    torch.manual_seed(0)
    model = mlp()
    pj.prune(model, pj.PruneConfig(sparsity=0.9))
    pj.share(model, pj.ShareConfig(bits=5))
    baked = pj.bake(copy.deepcopy(model)).eval()
    path = tmp_path / "m.pjz"
    pj.save(model, path)
    return path, baked


def test_kernel_runtime_matches_baked_model(deep_compressed):
    path, baked = deep_compressed
    model = pj.load(path, mlp(), runtime="kernel")
    assert [type(m) for m in model if not isinstance(m, nn.ReLU)] == [CodebookLinear] * 3
    for batch in (1, 7, 65):
        x = torch.randn(batch, 40)
        assert rel(model(x), baked(x)) <= 1e-5


def test_dense_runtime_is_plain_state(deep_compressed):
    path, baked = deep_compressed
    model = pj.load(path, mlp(), runtime="dense")
    assert all(type(m) in (nn.Linear, nn.ReLU) for m in model)
    state = model.state_dict()
    assert sorted(state) == sorted(baked.state_dict())
    for k, v in baked.state_dict().items():
        assert torch.equal(state[k], v)
    assert isinstance(pj.load(path), dict)  # without a model: the state_dict, as before


def test_auto_keeps_the_faster_and_stays_exact(deep_compressed):
    path, baked = deep_compressed
    model, info = load_into(mlp(), path, runtime="auto", batch=1, rounds=3, return_info=True)
    assert [c.name for c in info.layers] == ["0", "2", "4"]
    for c, m in zip(info.layers, [model[0], model[2], model[4]], strict=True):
        assert c.chosen == ("dense" if c.dense_s < c.kernel_s else "kernel")
        assert isinstance(m, nn.Linear if c.chosen == "dense" else CodebookLinear)
    x = torch.randn(3, 40)
    assert rel(model(x), baked(x)) <= 1e-5
    assert info.file_bytes == path.stat().st_size


def test_meta_skeleton_and_memory_accounting(deep_compressed):
    path, baked = deep_compressed
    with torch.device("meta"):
        skeleton = mlp()
    model, info = load_into(skeleton, path, runtime="kernel", return_info=True)
    held = sum(m.weight_bytes + m.bias.numel() * 4 for m in model if isinstance(m, SparseLinear))
    assert info.model_bytes == held
    assert info.model_bytes < sum(4 * p.numel() for p in baked.parameters()) / 5
    x = torch.randn(2, 40)
    assert rel(model(x), baked(x)) <= 1e-5


def test_stored_form_is_not_densified_and_decodes_equal(deep_compressed):
    path, _ = deep_compressed
    stored, info = load_stored(path)
    state = pj.load(path)
    assert isinstance(stored["2.weight"], StoredSparse)
    assert info["2.weight"].nonzeros == len(stored["2.weight"].positions)
    for k, v in stored.items():
        assert torch.equal(densify(v) if isinstance(v, StoredSparse) else v, state[k])


def test_conv_model_auto_needs_an_example(tmp_path):
    torch.manual_seed(0)
    model = cnn()
    pj.prune(model, pj.PruneConfig(sparsity=0.8))
    baked = pj.bake(copy.deepcopy(model)).eval()
    path = tmp_path / "c.pjz"
    pj.save(model, path)
    with pytest.raises(ValueError, match=r"^runtime='auto' times conv layer 0 on its input size: pass "
                                         r"example=<an input of the model>, or use runtime='kernel'$"):
        load_into(cnn(), path, runtime="auto")
    x = torch.randn(2, 3, 6, 6)
    loaded = load_into(cnn(), path, runtime="kernel")
    assert isinstance(loaded[0], SparseConv2d) and isinstance(loaded[2], SparseConv2d)
    assert rel(loaded(x), baked(x)) <= 1e-5
    auto = load_into(cnn(), path, runtime="auto", example=x[:1], rounds=2)
    assert rel(auto(x), baked(x)) <= 1e-5


def test_ternary_model_runs_bit_planes(tmp_path):
    torch.manual_seed(0)
    model = mlp()
    pj.ternarize(model, pj.TernaryConfig())
    baked = pj.bake(copy.deepcopy(model)).eval()
    path = tmp_path / "t.pjz"
    pj.save(model, path)
    loaded = load_into(mlp(), path, runtime="kernel")
    kinds = {type(m) for m in loaded if not isinstance(m, nn.ReLU)}
    assert TernaryLinear in kinds
    x = torch.randn(4, 40)
    assert rel(loaded(x), baked(x)) <= 1e-5


def test_bad_calls(deep_compressed, tmp_path):
    path, _ = deep_compressed
    with pytest.raises(ValueError, match=r"^runtime must be one of auto, kernel, dense; got 'fast'$"):
        pj.load(path, mlp(), runtime="fast")
    with pytest.raises(ValueError, match=r"^batch must be a positive integer, got 0$"):
        pj.load(path, mlp(), batch=0)
    wrong = nn.Sequential(nn.Linear(40, 95), nn.ReLU(), nn.Linear(95, 64), nn.ReLU(), nn.Linear(64, 10))
    with pytest.raises(ValueError, match=r"does not fit the model: 0.weight is \[96, 40\] in the file, \[95, 40\] in the model$"):
        pj.load(path, wrong, runtime="kernel")
    extra = nn.Sequential(*mlp(), nn.Linear(10, 2))
    with pytest.raises(ValueError, match=r"does not fit the model: missing 5.weight, 5.bias$"):
        pj.load(path, extra, runtime="kernel")


def test_speed_report_rows(deep_compressed):
    path, _ = deep_compressed
    model = pj.load(path, mlp(), runtime="kernel")
    bw = bandwidth_probe(megabytes=8, rounds=2)
    assert bw > 0
    rows = speed_report(model, [1, 4], rounds=2, bandwidth=bw)
    assert [(r.name, r.batch) for r in rows] == [(n, b) for n in ("0", "2", "4") for b in (1, 4)]
    for r in rows:
        assert r.weight_bytes == getattr(model, r.name).bytes_per_call(r.batch)
        assert r.dense_bytes == 4 * getattr(model, r.name).dense_weight().numel()
        assert r.time_s > 0 and r.dense_s > 0
        assert r.predicted_s == pytest.approx(r.weight_bytes / bw)
    text = format_report(rows, bw)
    assert "| **all layers** | | | 4 |" in text and "bytes predict (ms)" in text


def test_convert_swaps_live_layers():
    from penjing.runtime import convert

    torch.manual_seed(0)
    model = mlp()
    with torch.no_grad():
        model[2].weight[torch.rand_like(model[2].weight) < 0.9] = 0
    ref = copy.deepcopy(model)
    assert convert(model) == ["2"]  # the dense layers stay: BLAS beats any sparse kernel there
    assert isinstance(model[2], SparseLinear) and isinstance(model[0], nn.Linear)
    x = torch.randn(3, 40)
    assert rel(model(x), ref(x)) <= 1e-5


class EmbedMLP(nn.Module):
    """An embedding, a pruned Linear, a dense Linear and a reflect-padded conv."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 40)
        self.sparse = nn.Linear(40, 96)
        self.dense = nn.Linear(96, 8)
        self.reflect = nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")

    def forward(self, ids):
        h = self.dense(torch.relu(self.sparse(self.embed(ids)))).mean(1)  # [B, 8]
        return self.reflect(h.reshape(-1, 1, 2, 4)).flatten(1)


def test_every_weighted_layer_is_reported_on_a_kernel_or_with_the_reason(tmp_path):
    from penjing.runtime import convert

    torch.manual_seed(0)
    model = EmbedMLP()
    with torch.no_grad():
        model.sparse.weight[torch.rand_like(model.sparse.weight) < 0.9] = 0
        model.reflect.weight[0] = 0
    ids = torch.randint(0, 50, (3, 5))
    expected = model(ids)
    pj.save(model, tmp_path / "m.pjz")
    loaded, info = load_into(EmbedMLP(), tmp_path / "m.pjz", runtime="kernel", return_info=True)
    assert torch.allclose(loaded(ids), expected, rtol=1e-5, atol=1e-6)
    report = pj.last_report(loaded)
    assert report is info.report and report.verb == "load"
    assert [(c.name, c.kind) for c in report.touched] == [("sparse", "Linear")]
    assert report.touched[0].after == loaded.sparse.format
    reasons = {s.name: s.reason for s in report.skipped}
    assert reasons == {
        "embed": "no kernel for Embedding (the kernels take Linear, Conv2d, Hugging Face Conv1D and "
                 "pj.convert's int8 Linear / Conv2d)",
        "dense": "100% of the weights are nonzero: above 50%, dense BLAS is faster than a sparse kernel",
        "reflect": "the kernels pad with zeros given as numbers; this layer pads otherwise",
    }
    live = EmbedMLP()
    live.load_state_dict(model.state_dict())
    assert convert(live) == ["sparse"]
    assert {s.name: s.reason for s in pj.last_report(live).skipped} == reasons
    assert convert(live) == []  # a second call finds the kernel layer already there
    with pytest.raises(ValueError, match=r"runtime.convert: select names no weighted layer of the model: \['spars'\]"):
        convert(EmbedMLP(), select={"spars"})


def test_auto_reports_each_layer_it_kept_dense_with_both_times(tmp_path):
    torch.manual_seed(0)
    model = mlp()
    pj.prune(model, pj.PruneConfig(sparsity=0.9))
    pj.save(model, tmp_path / "m.pjz")
    loaded, info = load_into(mlp(), tmp_path / "m.pjz", runtime="auto", return_info=True)
    report = pj.last_report(loaded)
    assert len(report.touched) + len(report.skipped) == 3
    ms = pj.core.report.ms_text
    for choice in info.layers:
        text = f"kernel {ms(choice.kernel_s)} ms, dense {ms(choice.dense_s)} ms at batch 1"
        if choice.chosen == "kernel":
            assert next(c for c in report.touched if c.name == choice.name).detail == text
        else:
            skip = next(s for s in report.skipped if s.name == choice.name)
            assert skip.reason == f"auto kept the dense, faster: {text}"


class Conv1D(nn.Module):
    """Hugging Face's GPT-2 ``Conv1D``, as transformers defines it: y = x @ W + b, W [in, out]."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
        self.bias = nn.Parameter(torch.randn(nf))

    def forward(self, x):
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(*x.shape[:-1], self.nf)


@pytest.mark.parametrize("runtime", ["kernel", "auto"])
def test_hugging_face_conv1d_runs_as_a_linear_of_its_transpose(tmp_path, monkeypatch, runtime):
    import sys
    import types

    fake = types.ModuleType("transformers.pytorch_utils")  # what penjing looks for, not importing transformers
    fake.Conv1D = Conv1D
    monkeypatch.setitem(sys.modules, "transformers.pytorch_utils", fake)

    def gpt_mlp():
        torch.manual_seed(1)
        return nn.Sequential(Conv1D(48, 20), nn.GELU(), Conv1D(20, 48))

    model = gpt_mlp()
    pj.prune(model, pj.PruneConfig(sparsity=0.9))
    pj.share(model, pj.ShareConfig(bits=4, layers=["2"]))  # one fp32 sparse, one Deep-Compressed
    baked = pj.bake(copy.deepcopy(model)).eval()
    pj.save(model, tmp_path / "g.pjz")
    with torch.device("meta"):
        skeleton = gpt_mlp()
    loaded = pj.load(tmp_path / "g.pjz", skeleton, runtime=runtime)
    x = torch.randn(2, 5, 20)  # [batch, tokens, features]
    assert rel(loaded(x), baked(x)) <= 1e-5
    report = pj.last_report(loaded)
    assert len(report.touched) + len(report.skipped) == 2
    if runtime == "kernel":
        assert isinstance(loaded[0], SparseLinear) and isinstance(loaded[2], CodebookLinear)
        assert loaded[0].weights.nnz == int(torch.count_nonzero(baked[0].weight))
    for skipped in report.skipped:  # auto kept the Conv1D itself, weight [in, out] as the file has it
        assert isinstance(loaded[int(skipped.name)], Conv1D)
        assert loaded[int(skipped.name)].weight.shape == baked[int(skipped.name)].weight.shape
    rows = speed_report(loaded, [1], rounds=2, bandwidth=1e10)  # every layer timed, Conv1D or kernel
    assert [r.name for r in rows] == ["0", "2"]


def test_n_of_m_pruned_model_runs_sparse(tmp_path):
    torch.manual_seed(0)
    model = mlp()
    pj.prune(model, pj.PruneConfig(granularity="2:4"))
    baked = pj.bake(copy.deepcopy(model)).eval()
    path = tmp_path / "nm.pjz"
    pj.save(model, path)
    loaded = load_into(mlp(), path, runtime="kernel")
    assert all(isinstance(m, SparseLinear) for m in loaded if not isinstance(m, nn.ReLU))
    assert loaded[0].weights.nnz == baked[0].weight.numel() // 2
    x = torch.randn(5, 40)
    assert rel(loaded(x), baked(x)) <= 1e-5


def grouped_cnn():
    # a grouped 3x3, a depthwise 3x3 (stride 2) and a grouped 1x1
    return nn.Sequential(nn.Conv2d(4, 12, 3, padding=1, groups=2), nn.ReLU(),
                         nn.Conv2d(12, 12, 3, stride=2, padding=1, groups=12), nn.ReLU(),
                         nn.Conv2d(12, 6, 1, groups=3), nn.Flatten(), nn.Linear(6 * 16, 5))


@pytest.mark.parametrize("bits", [None, 4])
def test_grouped_and_depthwise_convs_run_from_the_file(tmp_path, bits):
    torch.manual_seed(1)
    model = grouped_cnn()
    pj.prune(model, pj.PruneConfig(sparsity=0.7))
    if bits:
        pj.share(model, pj.ShareConfig(bits=bits))
    baked = pj.bake(copy.deepcopy(model)).eval()
    path = tmp_path / "g.pjz"
    pj.save(model, path)
    x = torch.randn(3, 4, 8, 8)
    loaded = load_into(grouped_cnn(), path, runtime="kernel")
    for i, g in ((0, 2), (2, 12), (4, 3)):
        assert isinstance(loaded[i], SparseConv2d) and loaded[i].groups == g
        # the block-diagonal layout holds the stored nonzeros, no more
        assert loaded[i].weights.nnz == int(torch.count_nonzero(baked[i].weight))
        assert torch.equal(loaded[i].dense_weight(), baked[i].weight.detach())
    assert rel(loaded(x), baked(x)) <= 1e-5
    auto = load_into(grouped_cnn(), path, runtime="auto", example=x[:1], rounds=2)
    assert rel(auto(x), baked(x)) <= 1e-5
    twin = pj.runtime.dense_twin(loaded[2])
    assert twin.groups == 12 and torch.equal(twin.weight, baked[2].weight.detach())
