"""The ``binarize``/``ternarize`` recipe steps and commands, end to end on a small model."""

from __future__ import annotations

import pytest
import torch

import penjing as pj
from penjing.cli import main
from penjing.recipe import RecipeContext, RecipeError
from penjing.recipe.schema import Recipe


@pytest.fixture(scope="module")
def lenet300_weights(tmp_path_factory, digits_data):
    """A LeNet-300-100 trained briefly, saved as a state_dict (no cached baseline needed)."""
    train, _ = digits_data
    torch.manual_seed(0)
    model = pj.models.LeNet300()
    pj.fit(model, train, epochs=3, lr=3e-3, progress=False)
    path = tmp_path_factory.mktemp("lowbit") / "lenet300.pt"
    torch.save(model.state_dict(), path)
    return path


def test_recipe_steps_validate_their_fields():
    recipe = Recipe.from_dict({"steps": [{"ternarize": {"algorithm": "twn", "threshold": 0.7}},
                                         {"binarize": {"algorithm": "binaryconnect", "stochastic": True}}]})
    assert [s.method for s in recipe.steps] == ["ternarize", "binarize"]
    assert recipe.steps[0].params == pj.TernaryConfig(algorithm="twn", threshold=0.7)
    with pytest.raises(RecipeError, match=r"step 1 \(ternarize\): .*TTQ threshold t must be in \(0, 1\), got 1.5"):
        Recipe.from_dict({"steps": [{"ternarize": {"threshold": 1.5}}]})
    with pytest.raises(RecipeError, match=r"step 1 \(binarize\): .*BinaryConfig.algorithm must be one of"):
        Recipe.from_dict({"steps": [{"binarize": {"algorithm": "xor"}}]})
    with pytest.raises(RecipeError, match=r"step 1 \(binarize\): .*unknown field\(s\) \['method'\] for BinaryConfig"):
        Recipe.from_dict({"steps": [{"binarize": {"method": "xnor"}}]})


def test_ternarize_step_runs_finetunes_and_reports_sparsity(tmp_path, digits_data):
    from penjing.recipe.steps import ternarize as step

    train, test = digits_data
    model = pj.models.LeNet300()
    ctx = RecipeContext(train=torch.utils.data.Subset(train, range(200)), test=test,
                        out_dir=tmp_path, progress=False, echo=False)
    step.run(model, step.CONFIG(algorithm="ttq", keep_first_last=False), step.OPTIONS(finetune_epochs=1), ctx)
    assert model.fc2.parametrizations.weight[0].bits == 2
    (section,) = ctx.artifacts["sections"]
    assert "Ternary sparsity (TTQ)" in section and "| fc2 |" in section


def test_ternarize_command_writes_a_pjz_file(tmp_path, lenet300_weights, capsys):
    out = tmp_path / "t.pjz"
    rc = main(["ternarize", "--model", "lenet300", "--weights", str(lenet300_weights), "--algorithm", "twn",
               "--epochs", "1", "--no-progress", "--no-keep-first-last", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "zeros %" in text and "ternarize: 3 layer(s) changed, 0 skipped" in text
    # one ratio: the original's dense float32 (50,610 parameters) over the file's bytes
    size = out.stat().st_size
    assert f"{4 * 50610 / size:.1f}x smaller than dense fp32 of the original " \
        f"(202,440 B -> {size:,} B file)" in text
    lowbit = int(text.split(f"wrote {out}: {size:,} B, of which ")[1].split(" B")[0].replace(",", ""))
    assert lowbit <= 2 * 50200 / 8  # 2 bits per weight at most (Huffman-coded indices go below)
    model = pj.models.LeNet300()
    model.load_state_dict(pj.load(out))
    assert len(model.fc2.weight.unique()) <= 3


def test_binarize_command_and_its_errors(tmp_path, lenet300_weights, capsys):
    out = tmp_path / "b.pjz"
    rc = main(["binarize", "--model", "lenet300", "--weights", str(lenet300_weights), "--epochs", "0",
               "--no-progress", "--activations", "fc2", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "smaller than dense fp32 of the original" in text and f"wrote {out}" in text
    assert pj.load(out)["fc2.weight"].unique().numel() == 2 * 100  # +-alpha per output channel
    rc = main(["binarize", "--model", "lenet300", "--weights", str(lenet300_weights), "--epochs", "0",
               "--no-progress", "--layers", "act"])
    assert rc == 2
    assert "binarize: layers entry 'act' matches no layer with weights" in capsys.readouterr().err
    rc = main(["ternarize", "--model", "lenet300", "--weights", str(lenet300_weights), "--threshold", "2"])
    assert rc == 2
    assert "TTQ threshold t must be in (0, 1), got 2" in capsys.readouterr().err
