"""Bad input gets a clear error (exact messages); the recipe step and the command."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from penjing.cli import main
from penjing.models.user import load_state_dict
from penjing.pruning import PruneConfig, get_mask, prune
from penjing.recipe import RecipeContext, RecipeError, run_recipe
from penjing.recipe.schema import Recipe


def small() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(sparsity=1.0), "sparsity is 1.0: that would remove every weight of a layer and cut the "
                         "network; use a value in [0, 1)"),
    (dict(sparsity=1.5), "sparsity must be in [0, 1), got 1.5"),
    (dict(sparsity=-0.1), "sparsity must be in [0, 1), got -0.1"),
    (dict(sparsity="half"), "sparsity must be a number in [0, 1), got 'half'"),
    (dict(sparsity={"fc1": 0.5, "fc2": 1.0}), "sparsity for 'fc2' is 1.0: that would remove every "
                                               "weight of a layer and cut the network; use a value in [0, 1)"),
    (dict(), "set sparsity (a fraction in [0, 1), or a dict of layer glob -> sparsity) or quality "
             "(Han's threshold: quality x std)"),
    (dict(sparsity=0.5, quality=1.0), "set either sparsity or quality, not both"),
    (dict(quality=-1.0), "quality (threshold = quality x std of the layer's weights) must be > 0, got -1.0"),
    (dict(sparsity=0.5, criterion="random"), "unknown criterion 'random'; choose one of magnitude, l1, l2"),
    (dict(sparsity=0.5, scope="local"), "unknown scope 'local'; choose one of per-layer, global"),
    (dict(sparsity=0.5, schedule="gradual"), "unknown schedule 'gradual'; choose one of one-shot, "
                                             "iterative, polynomial"),
    (dict(sparsity=0.5, granularity="block"), "unknown granularity 'block'; choose unstructured, N:M "
                                              "(e.g. '2:4'), channel or filter"),
    (dict(granularity="4:2"), "granularity '4:2': N:M needs 0 < N < M (N weights kept in every M)"),
    (dict(sparsity=0.9, granularity="2:4"), "granularity '2:4' fixes the sparsity at 0.5; leave "
                                            "sparsity and quality unset"),
    (dict(sparsity=0.5, rounds=0), "rounds must be an integer >= 1, got 0"),
    (dict(sparsity={"fc1": 0.5}, scope="global"), "scope='global' uses one sparsity for all selected "
                                                  "layers; a per-layer dict needs scope='per-layer'"),
    (dict(quality=1.0, granularity="channel"), "quality applies to unstructured pruning; structured "
                                               "pruning takes sparsity (the fraction of filters to remove)"),
    (dict(sparsity=0.5, schedule="polynomial"), "the polynomial schedule prunes during training: set "
                                                "finetune_epochs >= 1"),
])
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        PruneConfig(**kwargs)


def test_a_layer_without_weight_is_skipped_with_a_warning():
    model = small()
    with pytest.warns(UserWarning, match=r"^penjing\.prune: skipping 2 \(ReLU\): it has no weight to prune$"):
        prune(model, PruneConfig(sparsity=0.5, layers=["1", "2"]))
    assert get_mask(model[1]) is not None


def test_batchnorm_weight_is_skipped_with_a_warning():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    with pytest.warns(UserWarning, match=r"skipping 1 \(BatchNorm2d\): its weight is 1-D"):
        prune(model, PruneConfig(sparsity=0.5, layers="*"))


def test_nothing_to_prune():
    with pytest.raises(ValueError, match=r"^no layer to prune: layers='ReLU' \(exclude=\(\)\) selects no "
                                         r"module with a weight in Sequential$"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prune(small(), PruneConfig(sparsity=0.5, layers="ReLU"))
    with pytest.raises(ValueError, match=r"^no key of the per-layer sparsity dict \['fc9'\] matches a "
                                         r"selected layer \(1, 3\)$"):
        prune(small(), PruneConfig(sparsity={"fc9": 0.5}))


def test_schedules_that_train_need_data():
    with pytest.raises(ValueError, match=r"^schedule 'iterative' with finetune_epochs=2 fine-tunes the "
                                         r"model: pass train= \(a Dataset or DataLoader\)$"):
        prune(small(), PruneConfig(sparsity=0.5, schedule="iterative", finetune_epochs=2))
    with pytest.raises(ValueError, match=r"^structured pruning traces the model: pass example_inputs="):
        prune(small(), PruneConfig(sparsity=0.5, granularity="channel"))
    with pytest.raises(ValueError, match=r"^pass either a PruneConfig or keyword options, not both"):
        prune(small(), PruneConfig(sparsity=0.5), sparsity=0.5)


@pytest.mark.parametrize(("fields", "message"), [
    ({"sparsity": 1.0}, "step 1 (prune): field 'sparsity': Value error, sparsity is 1.0: that would "
                        "remove every weight"),
    ({"sparsity": 0.5, "granularity": "3:2"}, "step 1 (prune): field '(step)': Value error, "
                                              "granularity '3:2': N:M needs 0 < N < M"),
    ({"sparsity": 0.5, "sparsty": 0.2}, "step 1 (prune): field 'sparsty': Extra inputs are not permitted"),
])
def test_recipe_step_errors_name_the_step_and_field(fields, message):
    with pytest.raises(RecipeError, match=re.escape(message)):
        Recipe.from_dict({"steps": [{"prune": fields}]})


def test_recipe_step_runs_and_leaves_plots(tmp_path):
    torch.manual_seed(0)
    data = TensorDataset(torch.rand(96, 1, 8, 8), torch.randint(0, 10, (96,)))
    recipe = Recipe.from_dict({"steps": [{"prune": {"sparsity": 0.75, "schedule": "iterative", "rounds": 2,
                                                    "finetune_epochs": 1}}]})
    ctx = RecipeContext(train=data, test=data, out_dir=tmp_path, progress=False, echo=False)
    result = run_recipe(recipe, small(), ctx)
    assert result.final.nonzeros == round(0.25 * 64 * 16) + round(0.25 * 16 * 10)
    titles = [t for t, _ in ctx.artifacts["plots"]]
    assert titles == ["Pruning: weights kept and accuracy per round", "Weights kept per layer after pruning"]
    assert all(p.exists() for _, p in ctx.artifacts["plots"])
    assert "| 2/2 |" in ctx.artifacts["sections"][0]
    assert "Pruning: weights kept and accuracy per round" in result.report_path.read_text()


USER_MODEL = """
from torch import nn
class Net(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 64, 32), nn.ReLU(), nn.Linear(32, 10))
"""


def test_cli_prunes_a_user_model_and_prints_the_table(tmp_path, capsys):
    path = tmp_path / "net.py"
    path.write_text(USER_MODEL)
    assert main(["prune", "--model", f"{path}:Net", "--granularity", "channel", "--sparsity", "0.5",
                 "--no-progress", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "dense params" in out and "4x1x3x3" in out and "parameters 16,842 -> 4,330 (3.89x fewer)" in out
    state = load_state_dict(tmp_path / "out" / "pruned.safetensors")
    assert tuple(state["0.weight"].shape) == (4, 1, 3, 3)
    assert main(["prune", "--model", f"{path}:Net", "--sparsity", "fc1=0.5", "--no-progress",
                 "--out", str(tmp_path / "o2")]) == 2
    assert "no key of the per-layer sparsity dict ['fc1'] matches a selected layer (0, 4, 6)" in \
        capsys.readouterr().err


def test_cli_errors_are_one_line(capsys):
    assert main(["prune", "--sparsity", "1.0"]) == 2
    assert capsys.readouterr().err.strip() == ("penjing prune: error: sparsity is 1.0: that would remove every "
                                               "weight of a layer and cut the network; use a value in [0, 1)")
    assert main(["prune", "--model", "missing.py:Net", "--sparsity", "0.5"]) == 2
    assert capsys.readouterr().err.strip() == "penjing prune: error: model file missing.py not found"
