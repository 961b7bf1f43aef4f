"""``penjing simulate`` and the energy column of the recipe tables."""

from __future__ import annotations

import torch
from torch import nn

from penjing.cli import main
from penjing.recipe.context import RecipeContext


def test_simulate_command_prints_table_and_writes_roofline(tmp_path, capsys):
    assert main(["simulate", "--model", "lenet5", "--hw", "edge", "--dataflow", "os", "--batch", "4",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for text in ("conv1", "fc2", "cycles", "util %", "DRAM bytes", "energy", "bound",
                 "edge (32x32, os, 500 MHz, 8 GB/s), batch 4:"):
        assert text in out
    png = tmp_path / "roofline.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulate_train_projects_workers(tmp_path, capsys):
    hw = tmp_path / "npu.yaml"
    hw.write_text("rows: 16\ncols: 16\nclock_mhz: 200\ndram_gbps: 4\nifmap_kib: 64\nweight_kib: 64\nofmap_kib: 16\n")
    assert main(["simulate", "--model", "lenet300", "--hw", str(hw), "--out", str(tmp_path), "--train",
                 "--workers", "64", "--bandwidth", "10Gbit", "--compute-ms", "2"]) == 0
    out = capsys.readouterr().out
    assert "fp32:" in out and "mixed:" in out and "mixed vs fp32:" in out
    assert "64 workers, 10Gbit (1.25 GB/s)" in out and "compute 2.00 ms per step (given)" in out
    for label in ("ring all-reduce", "ring all-reduce + DGC 0.001", "parameter server + DGC 0.001"):
        assert label in out


def test_simulate_bad_input_is_one_line(tmp_path, capsys):
    assert main(["simulate", "--hw", "tpu-v9", "--out", str(tmp_path)]) == 2
    assert "penjing simulate: error: unknown hardware 'tpu-v9'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("rows: 0\ncols: 4\nclock_mhz: 1\ndram_gbps: 1\nifmap_kib: 1\nweight_kib: 1\nofmap_kib: 1\n")
    assert main(["simulate", "--hw", str(bad), "--out", str(tmp_path)]) == 2
    assert "rows must be a positive integer" in capsys.readouterr().err
    assert main(["simulate", "--workers", "4", "--out", str(tmp_path)]) == 2
    assert "--workers projects training: add --train" in capsys.readouterr().err


def test_recipe_tables_get_an_energy_column(tmp_path, digits_data):
    from penjing.models import LeNet300

    train, test = digits_data
    ctx = RecipeContext(train=train, test=test, out_dir=tmp_path, echo=False)
    result = ctx.record(LeNet300(), "dense")
    assert list(result.extra_columns) == ["energy"]
    assert [c.endswith("J") for c in result.extra_columns["energy"]] == [True] * 3
    assert "energy" in result.to_markdown()

    class Picky(nn.Module):  # runs in evaluate, but not on a single traced sample
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            if x.shape[0] == 1:
                raise RuntimeError("batch of one")
            return self.fc(x.flatten(1))

    result = ctx.record(Picky(), "untraceable")
    assert result.extra_columns == {}
    assert result.accuracy is not None
    torch.manual_seed(0)


def test_simulate_scalesim_files_and_gemm(tmp_path, capsys):
    from penjing.hw.scalesim_io import ScaleSimConfig, read_report

    cfg = tmp_path / "a.cfg"
    cfg.write_text(ScaleSimConfig(rows=8, cols=8, ifmap_kb=4, filter_kb=4, ofmap_kb=4, dataflow="os").to_cfg())
    topo = tmp_path / "t.csv"
    topo.write_text("Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, "
                    "Strides,\nc1, 16, 16, 3, 3, 8, 16, 1,\n")
    assert main(["simulate", "--scalesim-config", str(cfg), "--topology", str(topo),
                 "--reports", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    # 14x14 ofmap, K = 72, N = 16 on 8x8 os: 25 x 2 folds of 72 + 8 + 8 - 2 = 86 cycles, minus 1
    assert "c1 | 196x72x16 | 4,299 | 0 |" in out
    rows = read_report(tmp_path / "rep" / "COMPUTE_REPORT.csv")
    assert rows[0][2] == 4299.0
    assert (tmp_path / "rep" / "DETAILED_ACCESS_REPORT.csv").read_text().startswith("LayerID, SRAM IFMAP Start Cycle")
    assert main(["simulate", "--gemm", "4,32,10", "--hw", "edge", "--dataflow", "ws"]) == 0
    # ws: S_R = K = 32 (1 fold), S_C = N = 10 (1 fold), T = M = 4: 2*32 + 32 + 4 - 2 - 1 = 97
    assert "gemm | 4x32x10 | 97 |" in capsys.readouterr().out


def test_simulate_scalesim_bad_input_is_one_line(tmp_path, capsys):
    assert main(["simulate", "--gemm", "4,x,10"]) != 0
    assert "--gemm needs three positive integers M,K,N, got '4,x,10'" in capsys.readouterr().err
    assert main(["simulate", "--scalesim-config", str(tmp_path / "none.cfg"), "--gemm", "1,2,3"]) != 0
    assert "not found" in capsys.readouterr().err
    topo = tmp_path / "t.csv"
    topo.write_text("Layer,\nc1, 1, 2,\n")
    assert main(["simulate", "--topology", str(topo)]) != 0
    assert "expected 8 fields" in capsys.readouterr().err
