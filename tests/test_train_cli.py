"""``penjing train|distill|dsd`` and the ``distill``/``dsd`` recipe steps, end to end (small)."""

from __future__ import annotations

import pytest
import torch

from penjing.cli import main
from penjing.data import digits
from penjing.models import get_model
from penjing.models.user import load_state_dict
from penjing.recipe import RecipeContext, run_recipe
from penjing.recipe.schema import Recipe, RecipeError

torch.set_num_threads(1)


def test_train_writes_weights_and_a_checkpoint_then_resumes(tmp_path, capsys):
    out, ckpt = tmp_path / "m.safetensors", tmp_path / "run.ckpt"
    args = ["train", "--steps", "6", "--precision", "fp16-master", "--checkpoint", str(ckpt),
            "--checkpoint-every", "3", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "lenet300 (fp16-master): 6 steps" in text and "0 step(s) skipped" in text
    model = get_model("lenet300")
    model.load_state_dict(load_state_dict(out))
    assert main([*args[:2], "9", *args[3:], "--resume", str(ckpt)]) == 0
    assert "9 steps" in capsys.readouterr().out
    assert main(["train", "--model", "lenet5", "--steps", "2", "--resume", str(ckpt), "--no-progress",
                 "--out", str(out)]) == 2
    assert "was written for a different model" in capsys.readouterr().err


def test_dsd_and_distill_commands(tmp_path, capsys):
    assert main(["dsd", "--steps", "9", "--no-progress", "--out", str(tmp_path / "d.pt")]) == 0
    text = capsys.readouterr().out
    assert "| sparse | 6 |" in text and "| 50.0% |" in text
    teacher = tmp_path / "teacher.pt"
    assert main(["train", "--steps", "20", "--lr", "3e-3", "--no-progress", "--out", str(teacher)]) == 0
    assert main(["distill", "--teacher-weights", str(teacher), "--steps", "10", "--baseline",
                 "--no-progress", "--out", str(tmp_path / "s.pt")]) == 0
    text = capsys.readouterr().out
    assert "student mlp:64: 4,810 params (10.5x smaller as float32)" in text and "student on labels alone" in text
    assert main(["distill", "--T", "0", "--no-progress"]) == 2
    assert "distillation temperature T must be > 0, got 0.0" in capsys.readouterr().err


def test_recipe_steps_validate_and_run(tmp_path):
    with pytest.raises(RecipeError, match=r"step 1 \(distill\): .*distillation alpha must be in \[0, 1\], got 2.0"):
        Recipe.from_dict({"steps": [{"distill": {"alpha": 2}}]})
    with pytest.raises(RecipeError, match=r"step 1 \(dsd\): .*DSD sparsity must be in \(0, 1\)"):
        Recipe.from_dict({"steps": [{"dsd": {"sparsity": 0}}]})
    train, test = digits()
    torch.manual_seed(0)
    model = get_model("lenet300")
    recipe = Recipe.from_dict({"steps": [{"dsd": {"epochs": 1, "lr": 3e-3}}, {"distill": {"epochs": 1}}]})
    ctx = RecipeContext(train=train, test=test, out_dir=tmp_path, progress=False, echo=False)
    run_recipe(recipe, model, ctx)
    dsd_section, distill_section = ctx.artifacts["sections"]
    assert "| re-dense | 19 |" in dsd_section and "### Distillation" in distill_section
