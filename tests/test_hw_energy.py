"""Layer tracing and the 45 nm energy model: sparsity, bits, the lecture's ratios, errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import penjing as pj
from penjing.hw import energy, load_table, trace
from penjing.models import LeNet300
from penjing.pruning import PruneConfig
from penjing.quantization import QuantConfig
from penjing.sharing import ShareConfig


def prune_(model: nn.Module, keep: float) -> None:
    """The real pruning verb: every layer keeps ``keep`` of its weights (a parametrization)."""
    pj.prune(model, PruneConfig(sparsity=1 - keep), progress=False)


def share_(model: nn.Module, bits: int) -> None:
    """The real weight-sharing verb: ``bits``-bit k-means codebooks on the kept weights."""
    pj.share(model, ShareConfig(bits=bits), progress=False)


def test_dram_access_costs_6400_int_adds_and_128_sram_accesses():
    t = load_table()
    assert t.dram_32b / t.op("int_add", 32) == pytest.approx(6400)
    assert t.dram_32b / t.sram_32b == pytest.approx(128)
    assert (t.op("float_mult", 32), t.op("int_mult", 8), t.op("float_add", 16)) == (3.7, 0.2, 0.4)
    # a width the table lacks is interpolated on a power law between its neighbours (8 and 32
    # bits), extrapolated below 8 with that segment's exponent
    slope = math.log(3.1 / 0.2) / math.log(32 / 8)
    assert t.op("int_mult", 5) == pytest.approx(0.2 * (5 / 8) ** slope)
    assert t.op("int_mult", 16) == pytest.approx(0.2 * 2 ** slope)
    assert 0.2 < t.op("int_mult", 16) < 3.1
    assert t.op("int_add", 16) == pytest.approx(0.03 * 2 ** (math.log(0.1 / 0.03) / math.log(4)))
    # SRAM by size: the 8 KB / 32 KB / 1 MB points exactly, power law in between
    assert (t.sram(8), t.sram(32), t.sram(1024)) == (5.0, 10.0, 50.0)
    assert t.sram(16) == pytest.approx(5.0 * 2 ** 0.5)
    assert 10.0 < t.sram(256) < 50.0 < t.sram(24 * 1024)


def test_dense_lenet300_energy_is_counted_by_hand():
    model = LeNet300()
    rep = energy(model, torch.rand(1, 1, 8, 8))
    fc1 = rep.rows[0]
    assert fc1.macs == 64 * 300
    # 64*300 fp32 weights (76.8 kB) do not fit in 8 KiB: read from DRAM at 640 pJ / 32 bits
    assert fc1.weight_level == "dram"
    assert fc1.dram_pj == pytest.approx(64 * 300 * 640)
    assert fc1.compute_pj == pytest.approx(64 * 300 * (3.7 + 0.9))
    # inputs + outputs (364 floats) fit on chip: SRAM at 5 pJ per word
    assert fc1.sram_pj == pytest.approx((64 + 300) * 5)
    # memory is what costs: DRAM is > 99% of the total for a dense MLP at batch 1
    assert rep.breakdown()["dram"] / rep.total_pj > 0.99


def test_pruning_to_8_percent_and_sharing_to_5_bits_lowers_energy():
    torch.manual_seed(0)
    model = LeNet300()
    x = torch.rand(1, 1, 8, 8)
    dense = energy(model, x)
    prune_(model, 0.08)
    pruned = energy(model, x)
    share_(model, 5)
    shared = energy(model, x)
    layers = [lay for lay in trace(model, x) if lay.kind == "gemm"]
    assert all(lay.density == pytest.approx(0.08, abs=0.002) and lay.weight_bits == 5 for lay in layers)
    assert not dense.weights_on_chip and shared.weights_on_chip
    # pruning: 12.5x fewer MACs; 8% of the weights with a 5-bit index each: 8.5x fewer bytes
    def mac_pj(rep):
        return sum(r.compute_pj for r in rep.rows if r.macs)

    assert mac_pj(pruned) == pytest.approx(mac_pj(dense) * 0.08, rel=0.01)
    assert dense.total_pj / pruned.total_pj > 8
    # sharing: 10 bits per kept weight (5 value + 5 index) = 5 kB, now resident in the SRAM
    assert shared.total_pj < pruned.total_pj / 20
    factor = dense.total_pj / shared.total_pj
    print(f"LeNet-300-100 energy per inference: dense {dense.total_pj / 1e3:.1f} nJ, pruned to 8% "
          f"{pruned.total_pj / 1e3:.1f} nJ ({dense.total_pj / pruned.total_pj:.1f}x), + 5-bit sharing "
          f"{shared.total_pj / 1e3:.2f} nJ ({factor:.0f}x lower)")
    assert factor > 200


def test_quantization_makes_ops_integer_and_cheaper():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32))
    x = torch.rand(4, 32)
    fp32 = energy(model, x, on_chip_kib=1024)
    weight_only_model = copy.deepcopy(model)
    pj.quantize(weight_only_model, QuantConfig(bits=8, activations="none"), data=[x], progress=False)
    weight_only = energy(weight_only_model, x, on_chip_kib=1024)
    # activations quantized too (calibrated on x): integer arithmetic
    pj.quantize(model, QuantConfig(bits=8), data=[x], progress=False)
    layer = next(lay for lay in trace(model, x) if lay.kind == "gemm")
    assert layer.integer and layer.compute_bits == 8 and layer.act_bits == 8
    int8 = energy(model, x, on_chip_kib=1024)
    fp32_row, wo_row, int8_row = (next(r for r in rep.rows if r.macs) for rep in (fp32, weight_only, int8))
    per_mac = [row.compute_pj / row.nonzero_macs for row in (fp32_row, wo_row)]
    assert per_mac[0] == pytest.approx(per_mac[1])  # float arithmetic still
    assert wo_row.weight_bytes == fp32_row.weight_bytes / 4
    assert int8_row.compute_pj == pytest.approx(int8_row.nonzero_macs * (0.2 + 0.1))
    assert int8.total_pj < weight_only.total_pj < fp32.total_pj


def test_int8_dtype_weights_are_8_bit():
    class Int8Linear(nn.Module):  # an integer-kernel layer that the tracer cannot look inside
        def __init__(self):
            super().__init__()
            self.register_buffer("weight", torch.randint(-127, 127, (20, 10), dtype=torch.int8))

        def forward(self, x):
            return torch.ops.aten.mm(x, self.weight.float().t())

    layer = next(lay for lay in trace(Int8Linear(), torch.rand(3, 10)) if lay.kind == "gemm")
    assert (layer.M, layer.K, layer.N, layer.weight_bits, layer.integer) == (3, 10, 20, 8.0, True)


def test_attention_matmuls_and_memory_only_ops_are_traced():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(16, 48)

        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            att = torch.softmax(q @ k.transpose(-2, -1) / 4, dim=-1)
            return F.avg_pool1d(att @ v, 2) + torch.bmm(q, k.transpose(1, 2)).mean()

    layers = trace(Attention(), torch.rand(2, 5, 16))
    gemms = [(lay.op, lay.M, lay.K, lay.N, lay.count) for lay in layers if lay.kind == "gemm"]
    assert gemms == [("linear", 10, 16, 48, 1), ("matmul", 5, 16, 5, 2), ("matmul", 5, 5, 16, 2),
                     ("bmm", 5, 16, 5, 2)]
    memory = {lay.op for lay in layers if lay.kind == "memory"}
    assert {"softmax", "avg_pool1d", "mean"} <= memory
    pool = next(lay for lay in layers if lay.op == "avg_pool1d")
    assert pool.ops == 2 * pool.out_elems  # a window of 2 per output


def test_tracing_leaves_the_model_untouched():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trace(model, torch.randn(8, 4))
    assert model.training and model[1].training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_untraceable_models_give_clear_errors(tmp_path):
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("needs a mask argument")

    with pytest.raises(ValueError, match=r"cannot trace Broken: its forward failed on the example input "
                                         r"of shape \(1, 4\): RuntimeError: needs a mask argument"):
        trace(Broken(), torch.randn(1, 4))
    class Spectral(nn.Module):
        def forward(self, x):
            return torch.fft.rfft(x).abs()

    with pytest.raises(ValueError, match=r"cannot trace fft_rfft \(aten._fft_r2c\) in 1: the hardware model "
                                         "does not cost this operation yet"):
        trace(nn.Sequential(nn.Linear(4, 4), Spectral()), torch.randn(2, 4))
    with pytest.raises(ValueError, match="no linear, convolution or matmul was executed"):
        trace(nn.ReLU(), torch.randn(3))
    with pytest.raises(ValueError, match="expected an nn.Module to trace, got function"):
        trace(lambda x: x, torch.randn(3))
    with pytest.raises(ValueError, match="cannot trace Linear: its forward failed"):
        energy(nn.Linear(4, 4), torch.randn(1, 5))


def test_user_energy_table(tmp_path):
    path = tmp_path / "7nm.yaml"
    path.write_text("name: mine\nint_add: {32: 0.03}\nint_mult: {32: 1.0}\nfloat_add: {32: 0.4}\n"
                    "float_mult: {32: 1.3}\nsram_32b: 1.0\ndram_32b: 100\nreg_32b: 0.01\n")
    model = nn.Linear(8, 8)
    rep = energy(model, torch.rand(1, 8), table=str(path), on_chip_kib=0)
    assert rep.table == "mine"
    assert rep.rows[0].dram_pj == pytest.approx(64 * 100 + 16 * 100)
    assert rep.rows[0].reg_pj == pytest.approx(3 * 64 * 0.01)
    bad = tmp_path / "bad.yaml"
    bad.write_text("int_add: {32: 0.1}\n")
    with pytest.raises(ValueError, match="missing int_mult, float_add, float_mult, sram_32b, dram_32b"):
        energy(model, torch.rand(1, 8), table=str(bad))
    # one tabulated width: every width costs it (nothing to interpolate between)
    assert load_table(path).op("float_mult", 64) == 1.3
    bad.write_text(path.read_text() + "sram_32b_by_kib: {0: 1.0}\n")
    with pytest.raises(ValueError, match="sram_32b_by_kib must map positive KiB to pJ >= 0"):
        load_table(bad)


def test_models_from_penjing_methods_trace():
    """Real pipelines: penjing.quantization's fake quant and int8 kernels, lowrank, Winograd."""
    import penjing as pj
    from penjing.data import digits

    train, test = digits()
    x = test.tensors[0][:4]
    torch.manual_seed(0)
    base = pj.models.LeNet5()
    fake = pj.quantize(copy.deepcopy(base), pj.QuantConfig(bits=8), data=train)
    layers = [lay for lay in trace(fake, x) if lay.kind == "gemm"]
    assert [(lay.weight_bits, lay.act_bits, lay.integer) for lay in layers] == [(8.0, 8.0, True)] * 4
    int8 = pj.convert(copy.deepcopy(fake), graph=False)
    real = trace(int8, x)
    assert [lay.op for lay in real if lay.kind == "gemm"] == ["int_gemm"] * 4
    assert not any(lay.op == "count_nonzero" for lay in real)  # the tracer's own work is not a layer
    # same GEMMs, same stored bytes, integer ops: the same weight energy as the fake-quant model
    fake_e, int8_e = energy(fake, x), energy(int8, x)
    assert {r.name: r.dram_pj for r in int8_e.rows if r.macs} == {r.name: r.dram_pj for r in fake_e.rows if r.macs}
    assert energy(base, x).total_pj > fake_e.total_pj
    wino = pj.winograd(copy.deepcopy(base))
    assert any(lay.kind == "gemm" for lay in trace(wino, x))


def test_both_roofline_ridges_for_tpu_v1():
    from penjing.hw import TPU_V1, ridges

    r = ridges(TPU_V1)  # 256 x 256 MACs at 700 MHz, 34 GB/s
    assert r["williams_ops_per_dram_byte"] == pytest.approx(2 * 256 * 256 * 700e6 / 34e9)
    assert r["jouppi_macs_per_weight_byte"] == pytest.approx(1349.27, abs=0.01)  # the paper's ~1,350
