"""``penjing export``: user model and .pjz in, ONNX out, errors as one line."""

from __future__ import annotations

import pytest
import torch

from penjing.cli import main

pytest.importorskip("onnxruntime")

USER_MODEL = """
from torch import nn
class Net(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
"""


@pytest.fixture
def user_model(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(USER_MODEL)
    return f"{path}:Net"


def test_cli_exports_a_user_model_and_its_int8_version(tmp_path, user_model, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", user_model, "-o", str(out), "--exporter", "torchscript",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert f"{out} (" in text and "torchscript exporter" in text
    error = float(text.split("max relative error ")[1].split()[0])
    assert error < 1e-5 and out.stat().st_size > 4 * (64 * 32 + 32 * 10)
    assert main(["export", "--model", user_model, "--int8", "-o", str(tmp_path / "q.onnx"),
                 "--exporter", "torchscript", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "2 Int8Linear -> QDQ Linear" in text and "2 weights stored as int8" in text


def test_cli_exports_the_weights_of_a_pjz(tmp_path, user_model, capsys):
    from penjing.codec import save
    from penjing.models.user import load_user_model

    model = load_user_model(user_model)
    with torch.no_grad():
        model[1].weight[:, :32] = 0  # something the .pjz must carry over
    save(model, tmp_path / "m.pjz")
    assert main(["export", str(tmp_path / "m.pjz"), "--model", user_model, "--exporter", "torchscript",
                 "--no-progress"]) == 0
    assert (tmp_path / "m.onnx").exists()
    import onnx
    from onnx import numpy_helper

    weights = [numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "m.onnx")).graph.initializer]
    first = next(w for w in weights if w.shape in ((32, 64), (64, 32)))
    assert (first == 0).sum() == 32 * 32


def test_cli_errors_are_one_line(tmp_path, user_model, capsys):
    assert main(["export", str(tmp_path / "missing.pjz"), "--model", user_model, "--no-progress"]) == 2
    assert capsys.readouterr().err == f"penjing export: error: {tmp_path / 'missing.pjz'} not found\n"
    assert main(["export", "--model", user_model, "--batch", "0", "--no-progress"]) == 2
    assert capsys.readouterr().err == "penjing export: error: --batch must be at least 1, got 0\n"
