"""Systolic-array simulator, penjing's own counting (``counting="penjing"``): hand-computed
cases, dataflow consistency, monotonicity, errors. SCALE-Sim counting (the default) is tested
in test_hw_scalesim.py."""

from __future__ import annotations

import functools
import itertools
import math
import time

import pytest
import torch
from torch import nn

from penjing.hw import TPU_V1, HardwareConfig, load_hw, trace
from penjing.hw import gemm_cost as _gemm_cost
from penjing.hw import simulate as _simulate
from penjing.hw.systolic import mapping

gemm_cost = functools.partial(_gemm_cost, counting="penjing")
simulate = functools.partial(_simulate, counting="penjing")


def fold_by_fold(M, K, N, R, C, dataflow):
    """Independent re-count: loop over every fold, each costing 2r + c + T - 2 cycles."""
    Sr, Sc, T = mapping(M, K, N, dataflow)
    total = 0
    for i in range(math.ceil(Sr / R)):
        r = min(R, Sr - i * R)
        for j in range(math.ceil(Sc / C)):
            c = min(C, Sc - j * C)
            total += 2 * r + c + T - 2
    return total


def hw(rows=8, cols=8, **kw):
    base = dict(name="t", rows=rows, cols=cols, clock_mhz=100, dram_gbps=1, ifmap_kib=64,
                weight_kib=64, ofmap_kib=64)
    base.update(kw)
    return HardwareConfig(**base)


@pytest.mark.parametrize("dataflow,dims", [("os", (4, 10, 4)), ("ws", (10, 4, 4)), ("is", (4, 4, 10))])
def test_gemm_that_exactly_fits_the_array(dataflow, dims):
    # S_R = S_C = 4 on a 4x4 array and T = 10: one fold of 2*4 + 4 + 10 - 2 = 20 cycles
    M, K, N = dims
    cost = gemm_cost(M, K, N, 4, 4, dataflow)
    assert (cost.fold_rows, cost.fold_cols) == (1, 1)
    assert cost.cycles == 20
    assert cost.macs == 160
    assert cost.utilisation == pytest.approx(160 / (16 * 20))
    assert cost.mapping_efficiency == 1.0


def test_gemm_folded_in_both_dimensions():
    # OS, 4x4 array, M=10 rows in folds of 4,4,2 and N=6 columns in folds of 4,2, T=K=5:
    # sum over folds of (2r + c + 3) = 2 * (4r + 12) summed over r in (4, 4, 2) = 28+28+20 = 76
    cost = gemm_cost(10, 5, 6, 4, 4, "os")
    assert (cost.fold_rows, cost.fold_cols) == (3, 2)
    assert cost.cycles == 76
    assert cost.mapping_efficiency == pytest.approx(60 / 96)
    # SCALE-Sim's buffer reads for OS: A once per column fold, B once per row fold
    assert cost.a_reads == 10 * 5 * 2 and cost.b_reads == 5 * 6 * 3 and cost.o_writes == 60


def test_closed_form_matches_fold_by_fold_count():
    for M, K, N, R, C in itertools.product((1, 3, 17), (1, 8, 33), (2, 16, 40), (1, 4, 16), (3, 16)):
        for df in ("os", "ws", "is"):
            assert gemm_cost(M, K, N, R, C, df).cycles == fold_by_fold(M, K, N, R, C, df), (M, K, N, R, C, df)


def test_conv_stride_2_im2col_view_and_cycles():
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    layer = next(lay for lay in trace(conv, torch.randn(1, 3, 9, 9)) if lay.kind == "gemm")
    # 9x9 input, stride 2, pad 1 -> 5x5 output: M = 25 pixels, K = 3*3*3 = 27, N = 8 filters
    assert (layer.M, layer.K, layer.N, layer.count) == (25, 27, 8, 1)
    rep = simulate(conv, torch.randn(1, 3, 9, 9), hw(8, 8), dataflow="ws")
    # WS: S_R = K = 27 (4 row folds: 8,8,8,3), S_C = N = 8 (1 fold), T = M = 25:
    # 2*1*27 + 4*8 + 4*1*(25-2) = 54 + 32 + 92 = 178
    assert rep.rows[0].compute_cycles == 178


def test_one_by_one_conv_is_a_plain_gemm_over_pixels():
    conv = nn.Conv2d(16, 32, 1)
    x = torch.randn(2, 16, 7, 7)
    layer = trace(conv, x)[0]
    assert (layer.M, layer.K, layer.N) == (2 * 49, 16, 32)
    # OS on 16x16: F_R = ceil(98/16) = 7, F_C = 2: 2*2*98 + 7*32 + 14*(16-2) = 812
    assert simulate(conv, x, hw(16, 16), dataflow="os").rows[0].compute_cycles == 812
    linear = nn.Linear(16, 32)
    assert simulate(linear, x.permute(0, 2, 3, 1).reshape(98, 16), hw(16, 16), dataflow="os").rows[0].compute_cycles == 812


def test_grouped_and_depthwise_convs_run_one_gemm_per_group():
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    layer = trace(conv, torch.randn(1, 8, 6, 6))[0]
    assert (layer.M, layer.K, layer.N, layer.count) == (36, 9, 1, 8)
    assert layer.macs == 36 * 9 * 8
    assert gemm_cost(36, 9, 1, 8, 8, "ws", 8).cycles == 8 * gemm_cost(36, 9, 1, 8, 8, "ws").cycles


def test_fc_batch_1_has_low_utilisation_on_a_weight_stationary_array():
    fc = nn.Linear(784, 300)
    one = simulate(fc, torch.randn(1, 784), "tpu-v1")
    # WS on 256x256: S_R = 784 (4 folds), S_C = 300 (2 folds), T = 1:
    # 2*2*784 + 4*300 + 8*(1-2) = 4328 cycles for 235,200 MACs
    assert one.rows[0].compute_cycles == 4328
    assert one.rows[0].utilisation == pytest.approx(235200 / (65536 * 4328))
    assert one.rows[0].utilisation < 0.001
    big = simulate(fc, torch.randn(256, 784), "tpu-v1")
    assert big.rows[0].utilisation > 100 * one.rows[0].utilisation


def test_dataflows_agree_on_the_same_work():
    for M, K, N in [(37, 50, 21), (128, 64, 256), (5, 300, 7)]:
        os_ = gemm_cost(M, K, N, 16, 16, "os")
        # the same (S_R, S_C, T) grid reached through each dataflow's mapping costs the same
        assert gemm_cost(K, M, N, 16, 16, "ws").cycles == os_.cycles
        assert gemm_cost(N, M, K, 16, 16, "is").cycles == os_.cycles
        for df in ("os", "ws", "is"):
            c = gemm_cost(M, K, N, 16, 16, df)
            assert c.macs == M * K * N
            assert 0 < c.utilisation <= 1
            assert c.cycles >= M * K * N / 256
    # a square problem on a square array is symmetric: every dataflow gives the same cycles
    assert len({gemm_cost(64, 64, 64, 16, 16, df).cycles for df in ("os", "ws", "is")}) == 1


def test_cycles_monotone_in_array_size():
    for M, K, N in [(1, 784, 300), (100, 27, 64), (3136, 576, 64), (9, 9, 9)]:
        for df in ("os", "ws", "is"):
            prev = math.inf
            for side in (1, 2, 4, 8, 16, 32, 64, 128, 256):
                cycles = gemm_cost(M, K, N, side, side, df).cycles
                assert cycles <= prev, (M, K, N, df, side)
                prev = cycles


def _convnet():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.Flatten(), nn.Linear(64 * 8 * 8, 100))


def test_dram_traffic_and_time_monotone_in_buffer_size():
    model, x = _convnet(), torch.randn(8, 3, 16, 16)
    for df in ("os", "ws", "is"):
        prev_bytes, prev_cycles = math.inf, math.inf
        for kib in (0, 1, 4, 16, 64, 256, 1024, 4096):
            rep = simulate(model, x, hw(16, 16, ifmap_kib=kib, weight_kib=kib, ofmap_kib=kib), dataflow=df)
            assert rep.dram_bytes <= prev_bytes and rep.cycles <= prev_cycles, (df, kib)
            prev_bytes, prev_cycles = rep.dram_bytes, rep.cycles
        # with no buffers at all the traffic is strictly larger than with generous ones
        small = simulate(model, x, hw(16, 16, ifmap_kib=0, weight_kib=0, ofmap_kib=0), dataflow=df)
        assert small.dram_bytes > rep.dram_bytes


def test_bandwidth_limits_make_stalls():
    model, x = _convnet(), torch.randn(1, 3, 16, 16)
    fast = simulate(model, x, hw(16, 16, dram_gbps=1000))
    slow = simulate(model, x, hw(16, 16, dram_gbps=0.01))
    assert fast.compute_cycles == slow.compute_cycles
    assert slow.stall_cycles > fast.stall_cycles >= 0
    assert any(r.bound == "memory" for r in slow.rows)
    assert slow.time_s > fast.time_s


def test_tpu_v1_preset_matches_the_paper():
    tpu = load_hw("tpu-v1")
    assert (tpu.rows, tpu.cols, tpu.clock_mhz, tpu.bits) == (256, 256, 700, 8)
    assert tpu.ifmap_kib == 24 * 1024 and tpu.ofmap_kib == 4 * 1024 and tpu.dram_gbps == 34
    # Jouppi et al. 2017: 92 TeraOps/s peak
    assert tpu.peak_ops_per_s == pytest.approx(91.75e12, rel=1e-3)
    assert tpu is TPU_V1


def test_hardware_yaml_file(tmp_path):
    path = tmp_path / "npu.yaml"
    path.write_text("rows: 4\ncols: 4\nclock_mhz: 100\ndram_gbps: 1\nifmap_kib: 1\nweight_kib: 1\n"
                    "ofmap_kib: 1\ndataflow: os\n")
    cfg = load_hw(str(path))
    assert (cfg.name, cfg.rows, cfg.dataflow) == ("npu", 4, "os")
    rep = simulate(nn.Linear(4, 4), torch.randn(4, 4), str(path))
    assert rep.rows[0].compute_cycles == 2 * 4 + 4 + 4 - 2


def _resnet50_style(blocks=(3, 4, 6, 3), width=8):
    """A 50-layer bottleneck ResNet from plain modules (49 convs + 1 fc, 4 projection convs)."""

    class Bottleneck(nn.Module):
        def __init__(self, cin, mid, stride):
            super().__init__()
            cout = 4 * mid
            self.body = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.proj = None if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return torch.relu(self.body(x) + (x if self.proj is None else self.proj(x)))

    layers = [nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
              nn.MaxPool2d(3, stride=2, padding=1)]
    cin = width
    for i, n in enumerate(blocks):
        mid = width * 2 ** i
        for j in range(n):
            layers.append(Bottleneck(cin, mid, 2 if j == 0 and i > 0 else 1))
            cin = 4 * mid
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    return nn.Sequential(*layers)


def test_resnet50_style_model_simulates_every_layer():
    model = _resnet50_style()
    x = torch.randn(1, 3, 64, 64)
    start = time.perf_counter()
    rep = simulate(model, x, "tpu-v1")
    elapsed = time.perf_counter() - start
    gemms = [r for r in rep.rows if r.kind == "gemm"]
    assert len(gemms) == 50 + 4  # 49 convs + fc, plus 4 projection shortcuts
    assert rep.macs == sum(lay.macs for lay in trace(model, x) if lay.kind == "gemm")
    print(f"50-layer ResNet-style simulation: {elapsed * 1e3:.0f} ms (benchmarks/simulate.py times it)")


@pytest.mark.parametrize("kw,message", [
    ({"rows": 0}, "rows must be a positive integer (PEs of the array), got 0"),
    ({"cols": -3}, "cols must be a positive integer (PEs of the array), got -3"),
    ({"weight_kib": -1}, "buffer weight_kib must be >= 0 KiB, got -1"),
    ({"dataflow": "rs"}, "unknown dataflow 'rs'; choose one of os (output stationary), ws (weight "
                         "stationary), is (input stationary)"),
    ({"dram_gbps": 0}, "dram_gbps must be > 0, got 0"),
])
def test_bad_hardware_is_a_clear_error(kw, message):
    with pytest.raises(ValueError) as err:
        hw(**kw)
    assert message in str(err.value)


def test_bad_inputs_to_simulate(tmp_path):
    model = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="unknown dataflow 'xs'"):
        simulate(model, torch.randn(1, 4), "edge", dataflow="xs")
    with pytest.raises(ValueError, match=r"unknown hardware 'tpu-v9'; use one of \['edge', 'tpu-v1'\] or a YAML file"):
        simulate(model, torch.randn(1, 4), "tpu-v9")
    with pytest.raises(FileNotFoundError, match="hardware file .*nope.yaml not found"):
        load_hw(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("rows: 4\ncols: 4\nclock_mhz: 1\ndram_gbps: 1\nifmap_kib: 1\nweight_kib: 1\nofmap_kib: 1\nlanes: 3\n")
    with pytest.raises(ValueError, match="unknown field"):
        load_hw(str(bad))
    with pytest.raises(ValueError, match="GEMM dimensions must be >= 1"):
        gemm_cost(0, 3, 3, 4, 4, "os")
    with pytest.raises(ValueError, match="the array needs at least 1x1 PEs, got 0x4"):
        gemm_cost(3, 3, 3, 0, 4, "os")


def test_roofline_flags_memory_bound_layers_and_writes_png(tmp_path):
    from penjing.hw.roofline import ridge, roofline_points

    tpu = load_hw("tpu-v1")
    assert ridge(tpu) == pytest.approx(91.75e12 / 34e9, rel=1e-3)  # ~2700 ops per DRAM byte
    fc = simulate(nn.Linear(1024, 1024), torch.randn(1, 1024), tpu)
    (point,) = roofline_points(fc)
    # batch 1: every int8 weight is used once -> 2 ops per byte, far left of the ridge
    assert point.intensity == pytest.approx(2 * 1024 * 1024 / (1024 * 1024 + 1024 + 1024), rel=1e-6)
    # DRAM-limited in the simulation too: the layer sits exactly on the slanted roof
    assert point.memory_bound and point.achieved == pytest.approx(point.attainable)
    # a conv between two others: its activations stay in the 24 MiB unified buffer, only its
    # 36 KiB of weights come from DRAM: 2*6272*576*64 ops / 36864 bytes = 12544 ops/byte
    convs = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1),
                          nn.Conv2d(64, 64, 3, padding=1))
    rep = simulate(convs, torch.randn(8, 64, 28, 28), tpu)
    first, middle, last = roofline_points(rep)
    assert middle.intensity == pytest.approx(12544) and not middle.memory_bound
    assert first.memory_bound and last.memory_bound  # network input from / output to DRAM
    png = fc.roofline(tmp_path / "r.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_partial_sums_that_do_not_fit_rechunk_or_spill_by_hand():
    fc, x = nn.Linear(64, 8), torch.randn(1000, 64)
    # ws on 16x16: F_R = 4 row folds; the 1000 x 8 partial sums (32 kB at 32 bits) exceed an
    # 8 KiB output buffer: 4 chunks re-reading the 512 B of int8 weights 3 more times (1.5 kB)
    # beats spilling 2 * 3 * 1000 * 8 * 4 = 192 kB of partial sums
    small = hw(16, 16, ifmap_kib=1024, weight_kib=64, ofmap_kib=8)
    row = simulate(fc, x, small, dataflow="ws").rows[0]
    assert row.dram_read_bytes == 1000 * 64 + 512 + 3 * 512
    assert row.dram_write_bytes == 1000 * 8
    # with room for all partial sums the weights are read once
    big = simulate(fc, x, small.with_(ofmap_kib=64), dataflow="ws").rows[0]
    assert big.dram_read_bytes == 1000 * 64 + 512
    # with no output buffer at all the partial sums spill
    none = simulate(fc, x, small.with_(ofmap_kib=0), dataflow="ws").rows[0]
    assert none.dram_read_bytes == 1000 * 64 + 512 + 3 * 1000 * 8 * 4
