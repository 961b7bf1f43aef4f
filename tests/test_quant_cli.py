"""The ``penjing quantize`` command and the ``quantize`` recipe step."""

from __future__ import annotations

import pytest
import torch

from penjing.cli import main
from penjing.models.user import load_state_dict
from penjing.recipe import RecipeError, load_recipe


def test_cli_ptq_lenet300(tmp_path, capsys, monkeypatch):
    # a fresh baseline would train for a minute: give the command a quickly trained one
    import penjing.models as models
    from penjing import fit

    def quick(name, train, **kw):
        torch.manual_seed(0)
        model = models.get_model(name, train.tensors[0][:1])
        fit(model, train, epochs=2, lr=3e-3, batch_size=128, progress=False)
        return model.eval()

    monkeypatch.setattr(models, "pretrained", quick)
    out = tmp_path / "int8.safetensors"
    assert main(["quantize", "--model", "lenet300", "--bits", "8", "--mode", "ptq", "--per-channel",
                 "--calib", "200", "--reduce-range", "weights", "--no-progress", "--save", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fc1" in text and "SQNR" in text and "int8 kernels" in text
    assert "8 [0,255]" in text  # full 8-bit activations when the weights take the 7-bit range
    state = load_state_dict(out)
    assert state["fc2.weight"].dtype == torch.int8


def test_cli_bad_bits(capsys):
    assert main(["quantize", "--bits", "33", "--no-progress"]) != 0
    assert "bits must be one of [2, 3, 4, 5, 6, 7, 8, 16]" in capsys.readouterr().err


def _recipe(tmp_path, step: str):
    path = tmp_path / "r.yaml"
    path.write_text(f"model: lenet300\nsteps:\n  - quantize: {step}\n")
    return load_recipe(path)


def test_recipe_step_validates(tmp_path):
    recipe = _recipe(tmp_path, "{bits: 4, mode: qat, lsq: true, epochs: 1}")
    assert recipe.steps[0].params.bits == 4
    with pytest.raises(RecipeError, match="bits must be one of"):
        _recipe(tmp_path, "{bits: 0}")
    with pytest.raises(RecipeError, match="calib_samples must be >= 1"):
        _recipe(tmp_path, "{calib: 0}")
    with pytest.raises(RecipeError, match=r"reduce_range must be one of \['weights', 'activations', 'none'\], got 'both'"):
        _recipe(tmp_path, "{reduce_range: both}")
    with pytest.raises(RecipeError, match="Extra inputs are not permitted"):
        _recipe(tmp_path, "{bitz: 8}")


def test_recipe_step_runs(tmp_path, digits_data):
    from penjing.models import LeNet300
    from penjing.quantization import Int8Linear
    from penjing.recipe import RecipeContext, run_recipe

    train, test = digits_data
    recipe = _recipe(tmp_path, "{bits: 8, calib: 128, convert: true}")
    ctx = RecipeContext(train=train, test=test, out_dir=tmp_path / "out", progress=False, echo=False)
    result = run_recipe(recipe, LeNet300(), ctx)
    assert isinstance(result.model.fc1, Int8Linear)
    assert any("Quantization (PTQ, W8 A8)" in s for s in ctx.artifacts["sections"])
