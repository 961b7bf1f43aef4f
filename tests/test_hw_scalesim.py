"""SCALE-Sim 3.0.0 parity: penjing's closed form against the reference itself, when installed.

The default run checks a handful of layers (each a few seconds of SCALE-Sim); the full sweep
(every ResNet-18 conv layer and six GEMMs, OS/WS/IS on 32x32 and 128x128) is
``benchmarks/scalesim.py`` and its committed table benchmarks/results/scalesim.md.
Without SCALE-Sim these tests skip with the reason; the closed-form tests below still run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import penjing as pj
from penjing.hw import load_hw, simulate
from penjing.hw.memory import _Epochs, array_counts, cyclic_scan, epoch_size, simulate_layer
from penjing.hw.resnet_shapes import gemm_shapes, resnet18_convs
from penjing.hw.scalesim_io import (
    ConvShape,
    ScaleSimConfig,
    read_config,
    read_report,
    read_topology,
    write_reports,
)
from penjing.hw.scalesim_ref import available, run_scalesim
from penjing.hw.user_bandwidth import _advance, _read_buffer, _WriteBuffer
from penjing.quantization import QuantConfig

REASON = available()
needs_scalesim = pytest.mark.skipif(REASON is not None, reason=REASON or "")

# small enough to run in seconds, large enough to fold in both dimensions and flush epochs
CASES = [ConvShape("c3x3", 18, 18, 3, 3, 16, 40, 1, 1), ConvShape("s2", 17, 17, 3, 3, 8, 24, 2, 2),
         ConvShape.gemm("g", 70, 36, 50)]


@needs_scalesim
@pytest.mark.parametrize("dataflow", ["os", "ws", "is"])
def test_cycles_utilisation_and_sram_counts_equal_scalesim(dataflow):
    cfg = ScaleSimConfig(rows=8, cols=8, ifmap_kb=2, filter_kb=2, ofmap_kb=2, dataflow=dataflow)
    ref = run_scalesim(CASES, cfg)
    for i, layer in enumerate(CASES):
        me = simulate_layer(layer, cfg)
        comp, det = me.compute_report(), me.detailed_report()
        assert comp[1:3] == ref.compute[i][2:4], layer.name  # total cycles, stalls: identical
        assert comp[3:] == pytest.approx(ref.compute[i][4:], rel=1e-9), layer.name  # util, mapping, compute util
        for col in (2, 5, 8):  # SRAM ifmap reads, filter reads, ofmap writes
            assert det[col] == ref.detailed[i][col + 1], (layer.name, col)
        for col in (11, 14, 17):  # DRAM reads/writes per operand
            assert det[col] == pytest.approx(ref.detailed[i][col + 1], rel=0.05), (layer.name, col)
        assert det[11] == ref.detailed[i][12] and det[14] == ref.detailed[i][15], layer.name  # exact here
        assert det[:2] + det[3:5] + det[6:8] == ref.detailed[i][1:3] + ref.detailed[i][4:6] + ref.detailed[i][7:9]


@pytest.mark.slow
@needs_scalesim
def test_resnet18_layer_parity_on_32x32():
    """Two ResNet-18 layers (the strided 1x1 shortcut and a stage-4 3x3) at 32x32, 64 KiB."""
    layers = [x for x in resnet18_convs() if x.name in ("layer2.0.downsample", "layer4.1.conv1")]
    cfg = ScaleSimConfig(rows=32, cols=32, dataflow="ws")
    ref = run_scalesim(layers, cfg)
    for i, layer in enumerate(layers):
        me = simulate_layer(layer, cfg)
        assert me.total_cycles == ref.compute[i][2]
        for col in (11, 14, 17):
            assert me.detailed_report()[col] == pytest.approx(ref.detailed[i][col + 1], rel=0.05)


@needs_scalesim
@pytest.mark.parametrize("dataflow", ["os", "ws", "is"])
def test_user_mode_equals_scalesim(dataflow):
    """Bandwidth-limited runs (three different interface bandwidths, 2 KiB / 1 KiB buffers):
    every COMPUTE report number and every DRAM count and window of DETAILED_ACCESS equal."""
    cfg = ScaleSimConfig(rows=8, cols=8, ifmap_kb=2, filter_kb=2, ofmap_kb=1, dataflow=dataflow,
                         bandwidth_mode="USER", bandwidths=[3], ifmap_bw=4, filter_bw=3)
    cases = CASES[1:]  # SCALE-Sim's USER mode takes ~10x its CALC time: the two small layers
    ref = run_scalesim(cases, cfg)
    for i, layer in enumerate(cases):
        me = simulate_layer(layer, cfg)
        assert me.compute_report()[:3] == ref.compute[i][1:4], layer.name  # with prefetch, total, stalls
        assert me.detailed_report()[9:] == ref.detailed[i][10:], layer.name


USER_REF = Path(__file__).parents[1] / "benchmarks" / "results" / "scalesim_ref_user.json"
SHAPES = {x.name: x for x in gemm_shapes() + resnet18_convs()}


def _user_refs(fast: bool) -> list[str]:
    keys = sorted(json.loads(USER_REF.read_text()))
    # the default run: the small GEMMs and the 1x1 shortcuts (each well under a second here)
    cheap = {"fc", "attn_scores", "tall", "layer2.0.downsample", "layer3.0.downsample", "layer4.0.downsample"}
    return [k for k in keys if not fast or k.split("|")[0] in cheap]


def _check_user_ref(key: str) -> None:
    ref = json.loads(USER_REF.read_text())[key]
    name, a, df, mode = key.split("|")
    bw = int(mode.removeprefix("USER"))
    cfg = ScaleSimConfig(rows=int(a), cols=int(a), dataflow=df, bandwidth_mode="USER", bandwidths=[bw],
                         ifmap_bw=bw, filter_bw=bw)
    me = simulate_layer(SHAPES[name], cfg)
    assert [me.total_cycles, me.stall_cycles] == ref["compute"][2:4], key
    det, rd = me.detailed_report(), ref["detailed"]
    assert [det[11], det[14], det[17]] == [rd[12], rd[15], rd[18]], key  # DRAM words per operand


@pytest.mark.parametrize("key", _user_refs(fast=True))
def test_user_mode_equals_committed_scalesim_runs(key):
    """Against SCALE-Sim 3.0.0 USER runs committed by benchmarks/scalesim.py (64 KiB SRAMs,
    ResNet-18 layers and GEMMs at 32x32 and 128x128): runs without SCALE-Sim installed."""
    _check_user_ref(key)


@pytest.mark.slow
@pytest.mark.parametrize("key", [k for k in _user_refs(fast=False) if k not in _user_refs(fast=True)])
def test_user_mode_equals_committed_scalesim_runs_convs(key):
    _check_user_ref(key)


def test_user_mode_timing_rules_by_hand():
    # 64 KiB, 10 words/cycle: sets of ceil(65536 / 100) = 656 addresses, a window of
    # ceil(32768 / 656) = 50 sets advancing by 50, one prefetch = ceil(32768 / 10) + 1 cycles
    b = _read_buffer(100 * 656, 100 * 656, 65536, 10)
    assert (b.sets, b.active, b.step, b.prefetch_cycles) == (101, 50, 50, 3278)
    assert (b.first_words, b.words_per_advance) == (32770, 32770)
    # the prefetch clock runs ahead of the array (L = 3277 > t = 100): the difference counts twice
    assert _advance(-1.0, 1, 3278, 100.0) == (3277.0, 2 * (3277 - 101))
    # behind the array: the row's time moves back to the clock, so a second advance in the same
    # row stalls from there (the row's -168 is then clipped by the other buffers' zero)
    L, stall = _advance(-1.0, 2, 3278, 10_000.0)
    assert L == 6555.0 and stall == 6555.0 + 2 * 3278 - 10_000 - 1 - 3278
    # the write buffer drains 32 words in 4 lines of 8 once more than half of 64 is occupied,
    # and stalls the array until that drain ends when it fills up
    w = _WriteBuffer(64, 8)
    assert w.row(33, 0.0) == 0.0 and (w.free, w.drain_end) == (64 - 33 + 32, 3.0)
    assert w.row(62, 1.0) == 0.0 and w.free == 1  # drain still running (until cycle 3): none starts
    assert w.row(1, 2.0) == 1.0  # full at cycle 2 while the drain runs until cycle 3
    assert w.row(1, 3.0) == 0.0 and (w.free, w.drain_end, w.written) == (31, 6.0, 64)


def test_fold_cycles_by_hand():
    # 14x14 ofmap of 3x3x8 windows, 16 filters on 8x8, os: Sr=196, Sc=16, T=72 -> 25 x 2 folds
    # of T + R + C - 2 = 86 cycles; SCALE-Sim reports the index of the last: 4299
    c = array_counts(196, 72, 16, 8, 8, "os")
    assert (c.fold_rows, c.fold_cols, c.demand_cycles - 1) == (25, 2, 4299)
    assert c.mapping_efficiency == pytest.approx((24 + 4 / 8) / 25)
    assert c.compute_utilisation == pytest.approx(0.98 * 72 / 86)
    assert (c.ifmap_reads, c.filter_reads, c.ofmap_writes) == (196 * 72 * 2, 72 * 16 * 25, 3136 + 50 * 16)
    # ws / is: 2R + C + T - 2 per fold; partial sums written once per row fold
    ws = array_counts(196, 72, 16, 8, 8, "ws")
    assert ws.demand_cycles == 9 * 2 * (16 + 8 + 196 - 2) and ws.ofmap_writes == 9 * 196 * 16
    assert array_counts(196, 72, 16, 8, 8, "is").demand_cycles == 9 * 25 * (16 + 8 + 16 - 2)


def test_epoch_model_of_cyclic_scans_by_hand():
    E = epoch_size(64)
    assert E == 50 * 655
    s = _Epochs(E)
    cyclic_scan(s, 1000, 5)  # fits: read once
    assert s.reads == 1000
    s = _Epochs(E)
    cyclic_scan(s, E + 1, 3)  # never fits: every access misses
    assert s.reads == 3 * (E + 1)
    s = _Epochs(1000)
    s.n = 600
    cyclic_scan(s, 800, 4)  # flush after 400 of pass 1; pass 2 re-reads those 400, then all hit
    assert s.reads == 800 + 400


def test_config_topology_and_reports_round_trip(tmp_path):
    cfg = ScaleSimConfig(rows=16, cols=8, ifmap_kb=32, filter_kb=16, ofmap_kb=8, dataflow="is",
                         bandwidth_mode="USER", bandwidths=[4], ifmap_bw=6, filter_bw=2)
    path = tmp_path / "a.cfg"
    path.write_text(cfg.to_cfg())
    assert read_config(path) == cfg
    topo = tmp_path / "t.csv"
    topo.write_text("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, "
                    "Num Filter, Strides,\nc1, 10, 12, 3, 3, 4, 8, 2,\nc2, 8, 8, 1, 1, 8, 8, 1, 2:4\n")
    layers = read_topology(topo)
    assert layers[0] == ConvShape("c1", 10, 12, 3, 3, 4, 8, 2, 2)
    assert (layers[0].ofmap_h, layers[0].ofmap_w) == (5, 6)  # SCALE-Sim's ceil, torch would say 4 x 5
    assert (layers[1].sparsity_n, layers[1].sparsity_m) == (2, 4)
    gemm = tmp_path / "g.csv"
    gemm.write_text("Layer, M, N, K,\nfc, 4, 10, 32,\n")
    (g,) = read_topology(gemm, gemm=True)
    assert (g.M, g.K, g.N) == (4, 32, 10)
    results = [simulate_layer(x, read_config(path)) for x in layers]
    paths = write_reports(results, tmp_path / "rep")
    assert [p.name for p in paths] == ["COMPUTE_REPORT.csv", "BANDWIDTH_REPORT.csv", "DETAILED_ACCESS_REPORT.csv"]
    rows = read_report(paths[0])
    assert [r[2] for r in rows] == [float(r.total_cycles) for r in results]
    assert read_report(paths[2])[0][3] == results[0].counts.ifmap_reads


@pytest.mark.parametrize("text,message", [
    ("Layer,\nc1, 10, 12, 3,\n", "expected 8 fields"),
    ("Layer,\nc1, 10, 12, 3, 3, 4, 8, x,\n", "sizes must be integers"),
    ("Layer,\nc1, 2, 2, 3, 3, 4, 8, 1,\n", "filter 3x3 is larger than the ifmap 2x2"),
    ("Layer,\nc1, 9, 9, 3, 3, 4, 8, 1, 3:2,\n", "sparsity N:M needs N <= M"),
    ("Layer,\n", "no layers"),
])
def test_bad_topology_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_topology(path)


def test_bad_config_is_a_clear_error(tmp_path):
    path = tmp_path / "a.cfg"
    path.write_text(ScaleSimConfig().to_cfg().replace("Dataflow : ws", "Dataflow : xs"))
    with pytest.raises(ValueError, match="unknown dataflow 'xs'"):
        read_config(path)
    path.write_text(ScaleSimConfig().to_cfg().replace("ArrayHeight:    32", "ArrayHeight:    big"))
    with pytest.raises(ValueError, match=r"ArrayHeight must be an integer, got 'big'"):
        read_config(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_config(tmp_path / "missing.cfg")


def _conv_net():
    return nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)).eval()


def test_2_4_pruning_and_int8_simulate_fewer_cycles_and_dram_bytes():
    torch.manual_seed(0)
    x = torch.randn(1, 16, 16, 16)
    hw = load_hw("edge").with_(bits=32, arith="float")  # an fp32 array, so int8 can pack
    dense = simulate(_conv_net(), x, hw)
    pruned = _conv_net()
    with torch.no_grad():
        for m in pruned:
            if isinstance(m, nn.Conv2d):
                w = m.weight.permute(0, 2, 3, 1).reshape(m.out_channels, -1, 4)  # along channels
                keep = w.abs().topk(2, dim=-1).indices
                pruned_w = (w * torch.zeros_like(w).scatter_(-1, keep, 1.0)).reshape(m.out_channels, 3, 3, -1)
                m.weight.copy_(pruned_w.permute(0, 3, 1, 2))
    sparse = simulate(pruned, x, hw)
    assert sparse.rows[0].gemm.endswith("(K'=72)")  # 144 -> 72 rows: the 2:4 mapping
    dense_w = next(r for r in dense.rows if r.kind == "gemm").dram_filter_read_bytes
    # 72 x 32 nonzeros at 32 bits + 2 index bits each, against 144 x 32 dense words
    assert sparse.rows[0].dram_filter_read_bytes == 72 * 32 * (32 + 2) / 8 and dense_w == 144 * 32 * 4
    assert sparse.compute_cycles < dense.compute_cycles
    assert sparse.dram_bytes < dense.dram_bytes
    int8 = _conv_net()  # the real verb: 8-bit weights and inputs, as the tracer reads them
    pj.quantize(int8, QuantConfig(bits=8), data=[x], progress=False)
    q = simulate(int8, x, hw)
    assert [r.gemm for r in q.rows if r.kind == "gemm"] == ["256x144x32 (K'=36)", "256x288x32 (K'=72)"]
    assert q.compute_cycles < dense.compute_cycles and q.dram_bytes < dense.dram_bytes
    assert q.energy_pj < dense.energy_pj


def test_the_hand_derived_layer_of_docs_hardware_md():
    """docs/hardware.md derives ResNet-18's ``6.conv2`` (3x3 conv 128 -> 128 on 28x28, ws on
    the edge array with 32-bit float PEs) by hand, dense, 2:4-pruned and int8: the simulator
    gives those numbers (K', cycles F_R F_C 878 - 1, weight and ofmap bytes; the ifmap reads
    the doc quotes from the memory model)."""
    torch.manual_seed(0)
    x = torch.randn(1, 128, 28, 28)
    hw = load_hw("edge").with_(bits=32, arith="float")

    def layer():
        return nn.Sequential(nn.Conv2d(128, 128, 3, padding=1, bias=False)).eval()

    pruned = layer()
    with torch.no_grad():  # 2:4 along the input channels
        w = pruned[0].weight.permute(0, 2, 3, 1).reshape(-1, 4)
        keep = torch.zeros_like(w).scatter_(-1, w.abs().topk(2, dim=-1).indices, 1.0)
        pruned[0].weight.copy_((w * keep).reshape(128, 3, 3, 128).permute(0, 3, 1, 2))
    int8 = layer()
    pj.quantize(int8, QuantConfig(bits=8), data=[x], progress=False)
    got = {}
    for name, model in (("dense", layer()), ("2:4", pruned), ("int8", int8)):
        row = next(r for r in simulate(model, x, hw, dataflow="ws").rows if r.kind == "gemm")
        got[name] = (row.gemm, row.compute_cycles, row.dram_ifmap_read_bytes, row.dram_filter_read_bytes,
                     row.dram_ofmap_write_bytes)
    assert got == {
        "dense": ("784x1152x128", 36 * 4 * 878 - 1, 14_450_688, 1152 * 128 * 4, 36 * 784 * 128 * 4),
        "2:4": ("784x1152x128 (K'=576)", 18 * 4 * 878 - 1, 14_450_688, 73_728 * (32 + 2) / 8, 18 * 784 * 128 * 4),
        "int8": ("784x1152x128 (K'=288)", 9 * 4 * 878 - 1, 3_612_672, 147_456, 9 * 784 * 128 * 1),
    }
