"""``penjing bench FILE``: the per-layer speed report of a .pjz file, and its errors."""

from __future__ import annotations

import pytest
import torch

import penjing as pj
from penjing.cli import main


@pytest.fixture
def lenet_file(tmp_path):
    torch.manual_seed(0)
    model = pj.models.get_model("lenet300", torch.zeros(1, 1, 8, 8))
    pj.prune(model, pj.PruneConfig(sparsity=0.9))
    path = tmp_path / "m.pjz"
    pj.save(model, path)
    return path


def test_bench_prints_the_report(lenet_file, capsys):
    assert main(["bench", str(lenet_file), "--batch", "1,4", "--rounds", "2", "--runtime", "kernel",
                 "--input-shape", "1,8,8", "--probe-mb", "8"]) == 0
    out = capsys.readouterr().out
    assert f"{lenet_file}: {lenet_file.stat().st_size:,} bytes; runtime kernel" in out
    assert "measured read bandwidth" in out
    for layer in ("fc1", "fc2", "fc3"):
        assert f"| {layer} | sparse " in out
    assert "| **all layers** | | | 4 |" in out


def test_bench_auto_lists_choices(lenet_file, capsys):
    assert main(["bench", str(lenet_file), "--batch", "2", "--rounds", "2", "--probe-mb", "8"]) == 0
    out = capsys.readouterr().out
    report = out[out.index("\nload: "):out.index("measured read")]  # each layer's choice, with both times
    assert report.count("(Linear)") == 3 and max(len(line) for line in report.split("\n")) <= 80
    assert " ".join(report.split()).count(" ms at batch 2") == 3


def test_bench_errors(lenet_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", str(lenet_file), "--batch", "1,x"])
    assert exc.value.code == 2
    assert "argument --batch: takes comma-separated positive integers, got '1,x'" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "none.pjz")]) != 0
    assert f"penjing bench: error: {tmp_path / 'none.pjz'} not found" in capsys.readouterr().err
    assert main(["bench", str(lenet_file), "--input-shape", "1,9,9", "--runtime", "kernel"]) != 0
    assert "does not fit --model lenet300: fc1.weight is [300, 64] in the file" in capsys.readouterr().err
