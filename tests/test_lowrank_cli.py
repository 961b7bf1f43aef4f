"""Low-rank on real data: accuracy after fine-tuning, the CLI, and the recipe step."""

from __future__ import annotations

import json

import pytest
import torch

from penjing.cli import main
from penjing.data import digits
from penjing.low_rank import LowRankConfig, decompose_model
from penjing.models import LeNet300, pretrained
from penjing.models.user import load_state_dict
from penjing.recipe import RecipeContext, run_recipe
from penjing.recipe.schema import Recipe, RecipeError
from penjing.train import evaluate, fit

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def trained_lenet300(data):
    train, _ = data
    torch.manual_seed(0)
    model = LeNet300()
    fit(model, train, epochs=15, lr=1e-3, progress=False)
    return model


def test_lenet300_at_half_the_parameters_fine_tuned_stays_close_to_dense(data, trained_lenet300):
    train, test = data
    model = __import__("copy").deepcopy(trained_lenet300)
    dense = evaluate(model, test)
    result = decompose_model(model, LowRankConfig(params=0.5), data=train)
    assert result.param_ratio <= 0.5
    fit(model, train, epochs=3, lr=3e-4, progress=False)
    assert dense > 0.95
    assert evaluate(model, test) >= dense - 0.015


def test_cli_prints_the_per_layer_table_and_writes_its_files(data, trained_lenet300, tmp_path, capsys):
    weights = tmp_path / "lenet300.pt"
    torch.save(trained_lenet300.state_dict(), weights)
    out = tmp_path / "out"
    rc = main(["lowrank", "--model", "lenet300", "--weights", str(weights), "--params", "0.5",
               "--epochs", "1", "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    for text in ("fc1", "fc2", "fc3", "params before", "MACs after", "rel. error", "accuracy: dense",
                 "params 50,610 ->"):
        assert text in printed, text
    assert (out / "spectra.png").stat().st_size > 1000
    ranks = json.loads((out / "ranks.json").read_text())
    assert ranks["method"] == "channel" and ranks["rank"]
    # the saved state_dict loads into a model rebuilt from ranks.json
    rebuilt = LeNet300()
    decompose_model(rebuilt, LowRankConfig(rank=ranks["rank"]))
    rebuilt.load_state_dict(load_state_dict(out / "model.safetensors"))
    assert evaluate(rebuilt, data[1]) > 0.9


@pytest.mark.parametrize(("argv", "message"), [
    (["--rank", "20"], "rank 20 for layer 'fc3' is larger than min(out, in) = 10; choose rank <= 10 or exclude the layer"),
    (["--energy", "1.5"], "energy must be in (0, 1], got 1.5"),
    (["--params", "0.001"], "a budget of 0.1% of the parameters cannot be met"),
])
def test_cli_bad_input_is_a_one_line_error(trained_lenet300, tmp_path, capsys, argv, message):
    weights = tmp_path / "w.pt"
    torch.save(trained_lenet300.state_dict(), weights)
    rc = main(["lowrank", "--weights", str(weights), "--epochs", "0", "--no-progress", "--out",
               str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("penjing lowrank: error: ") and message in err


def test_recipe_step_factorises_fine_tunes_and_reports(data, trained_lenet300, tmp_path):
    train, test = data
    model = __import__("copy").deepcopy(trained_lenet300)
    recipe = Recipe.from_dict({"steps": [{"lowrank": {"params": 0.5, "finetune_epochs": 1}}]})
    ctx = RecipeContext(train=train, test=test, out_dir=tmp_path, progress=False, echo=False)
    result = run_recipe(recipe, model, ctx)
    assert result.final.params < 0.5 * result.summaries[0].params + 1000
    report = result.report_path.read_text()
    assert "Low-rank factorisation (step 1)" in report and "lowrank_spectra_1.png" in report
    assert (tmp_path / "lowrank_spectra_1.png").exists()
    assert result.final.accuracy > 0.9


def test_recipe_step_takes_per_layer_tucker_ranks():
    recipe = Recipe.from_dict({"steps": [{"lowrank": {"rank": {"layers.2.*": [8, 16]}, "method": "tucker"}}]})
    config = recipe.steps[0].params.config()
    assert config.rank_for("layers.2.conv1") == (8, 16) and config.rank_for("fc") is None


def test_recipe_step_rejects_bad_fields_on_load():
    with pytest.raises(RecipeError, match=r"step 1 \(lowrank\): .*energy must be in \(0, 1\], got 1.5"):
        Recipe.from_dict({"steps": [{"lowrank": {"energy": 1.5}}]})
    with pytest.raises(RecipeError, match=r"step 1 \(lowrank\): .*set one of rank, energy, params, flops"):
        Recipe.from_dict({"steps": [{"lowrank": {"energy": 0.9, "rank": 3}}]})
    with pytest.raises(RecipeError, match=r"field 'ranks'"):
        Recipe.from_dict({"steps": [{"lowrank": {"ranks": 3}}]})


@pytest.fixture(scope="module")
def baseline_cache(tmp_path_factory):
    """One cache for the module, so each reference model is trained once, not per test."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PENJING_CACHE", str(tmp_path_factory.mktemp("penjing-cache")))
        yield


@pytest.mark.slow
@pytest.mark.parametrize(("name", "method"), [("lenet300", "channel"), ("lenet5", "channel"),
                                              ("lenet5", "spatial"), ("resnet", "channel"),
                                              ("resnet", "tucker")])
def test_reference_models_at_half_the_parameters_within_one_point(data, name, method, baseline_cache):
    train, test = data
    model = pretrained(name, train, progress=False)
    dense = evaluate(model, test)
    result = decompose_model(model, LowRankConfig(params=0.5, method=method), data=train)
    assert result.param_ratio <= 0.5
    fit(model, train, epochs=5, lr=3e-4, progress=False)
    assert evaluate(model, test) >= dense - 0.01
