"""Bad input gets a clear error (exact messages); the recipe step and the command."""

from __future__ import annotations

import re

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
    (dict(sparsity=1.0), "PruneConfig.sparsity is 1.0: that would remove every weight of a layer and "
                         "cut the network; use a value in [0, 1)"),
    (dict(sparsity=1.5), "PruneConfig.sparsity must be in [0, 1), got 1.5"),
    (dict(sparsity=-0.1), "PruneConfig.sparsity must be in [0, 1), got -0.1"),
    (dict(sparsity="half"), "PruneConfig.sparsity must be a number in [0, 1), got 'half'"),
    (dict(sparsity=float("nan")), "PruneConfig.sparsity must be in [0, 1), got nan"),
    (dict(sparsity={"fc1": 0.5, "fc2": 1.0}), "PruneConfig.sparsity['fc2'] is 1.0: that would remove "
                                               "every weight of a layer and cut the network; use a "
                                               "value in [0, 1)"),
    (dict(), "PruneConfig: set sparsity (a fraction in [0, 1), per-layer selector -> fraction pairs, "
             "or auto) or quality (Han's threshold: quality x std)"),
    (dict(sparsity=0.5, quality=1.0), "PruneConfig: set either sparsity or quality, not both"),
    (dict(quality=-1.0), "PruneConfig.quality (threshold = quality x std of the layer's weights) must "
                         "be a finite number > 0, got -1.0"),
    (dict(quality=float("inf")), "PruneConfig.quality (threshold = quality x std of the layer's "
                                 "weights) must be a finite number > 0, got inf"),
    (dict(sparsity=0.5, criterion="random"), "PruneConfig.criterion: unknown criterion 'random'; "
                                             "choose one of magnitude, l1, l2"),
    (dict(sparsity=0.5, scope="local"), "PruneConfig.scope: unknown scope 'local'; choose one of "
                                        "per-layer, global"),
    (dict(sparsity=0.5, schedule="gradual"), "PruneConfig.schedule: unknown schedule 'gradual'; "
                                             "choose one of one-shot, iterative, polynomial"),
    (dict(sparsity=0.5, granularity="block"), "PruneConfig.granularity: unknown granularity 'block'; "
                                              "choose unstructured, N:M (e.g. '2:4'), channel or filter"),
    (dict(granularity="4:2"), "PruneConfig.granularity '4:2': N:M needs 0 < N < M (N weights kept in "
                              "every M)"),
    (dict(sparsity=0.9, granularity="2:4"), "PruneConfig.granularity '2:4' fixes the sparsity at 0.5; "
                                            "leave sparsity and quality unset"),
    (dict(sparsity=0.5, rounds=0), "PruneConfig.rounds must be an integer >= 1, got 0"),
    (dict(sparsity=0.5, lr=float("inf")), "PruneConfig.lr must be a finite number > 0, got inf"),
    (dict(sparsity={"fc1": 0.5}, scope="global"), "PruneConfig.scope='global' uses one sparsity for "
                                                  "all selected layers; per-layer sparsities need "
                                                  "scope='per-layer'"),
    (dict(quality=1.0, granularity="channel"), "PruneConfig.quality applies to unstructured pruning; "
                                               "structured pruning takes sparsity (the fraction of "
                                               "filters to remove)"),
    (dict(sparsity=0.5, schedule="polynomial"), "PruneConfig.schedule='polynomial' prunes during "
                                                "training: set finetune_epochs >= 1"),
    (dict(sparsity="auto", granularity="channel"), "PruneConfig.sparsity='auto' picks per-layer "
                                                   "sparsities for unstructured, per-layer pruning"),
])
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        PruneConfig(**kwargs)


def test_selecting_a_layer_without_weight_is_an_error():
    with pytest.raises(ValueError, match=r"^prune: layers entry '2' matches no layer with weights; "
                                         r"the weighted layers are 1, 3$"):
        prune(small(), PruneConfig(sparsity=0.5, layers=["1", "2"]))
    with pytest.raises(ValueError, match=r"^prune: layers entry 'ReLU' matches no layer with weights"):
        prune(small(), PruneConfig(sparsity=0.5, layers="ReLU"))
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    prune(model, PruneConfig(sparsity=0.5, layers="*"))  # BatchNorm's 1-D weight is not a layer's
    assert get_mask(model[0]) is not None and get_mask(model[1]) is None


def test_per_layer_key_matching_nothing():
    with pytest.raises(ValueError, match=r"^PruneConfig.sparsity: key 'fc9' matches no layer; the "
                                         r"layers are 1, 3$"):
        prune(small(), PruneConfig(sparsity={"fc9": 0.5}))


def test_schedules_that_train_need_data():
    with pytest.raises(ValueError, match=r"^prune: schedule 'iterative' with finetune_epochs=2 "
                                         r"fine-tunes the model: pass data="):
        prune(small(), PruneConfig(sparsity=0.5, schedule="iterative", finetune_epochs=2))
    with pytest.raises(ValueError, match=r"^structured pruning runs the model: pass example_inputs="):
        prune(small(), PruneConfig(sparsity=0.5, granularity="channel"))
    with pytest.raises(ValueError, match=r"^pass either a PruneConfig or keyword fields, not both"):
        prune(small(), PruneConfig(sparsity=0.5), sparsity=0.5)


@pytest.mark.parametrize(("fields", "message"), [
    ({"sparsity": 1.0}, "step 1 (prune): PruneConfig.sparsity is 1.0: "
                        "that would remove every weight"),
    ({"sparsity": 0.5, "granularity": "3:2"}, "step 1 (prune): PruneConfig.granularity '3:2': N:M needs 0 < N < M"),
    ({"sparsity": 0.5, "sparsty": 0.2}, "step 1 (prune): unknown "
                                        "field(s) ['sparsty'] for PruneConfig; allowed: batch_size, begin,"),
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
    assert main(["prune", "--no-finetune", "--model", f"{path}:Net", "--granularity", "channel", "--sparsity", "0.5",
                 "--no-progress", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "dense params" in out and "4x1x3x3" in out and "parameters 16,842 -> 4,330" in out
    # one ratio: the original model's dense float32 over the pruned model's stored bytes
    assert "smaller than dense fp32 of the original (67,368 B ->" in out
    state = load_state_dict(tmp_path / "out" / "pruned.safetensors")
    assert tuple(state["0.weight"].shape) == (4, 1, 3, 3)
    assert main(["prune", "--no-finetune", "--model", f"{path}:Net", "--sparsity", "fc1=0.5", "--no-progress",
                 "--out", str(tmp_path / "o2")]) == 2
    assert "PruneConfig.sparsity: key 'fc1' matches no layer; the layers are 0, 4, 6" in \
        capsys.readouterr().err
    # role keys run on any model
    assert main(["prune", "--no-finetune", "--model", f"{path}:Net", "--sparsity", "first=0.5,last=0.2,*=0.8",
                 "--no-progress", "--out", str(tmp_path / "o3")]) == 0


def test_cli_errors_are_one_line(capsys):
    assert main(["prune", "--sparsity", "1.0"]) == 2
    assert capsys.readouterr().err.strip() == ("penjing prune: error: PruneConfig.sparsity is 1.0: that "
                                               "would remove every weight of a layer and cut the "
                                               "network; use a value in [0, 1)")
    assert main(["prune", "--model", "missing.py:Net", "--sparsity", "0.5"]) == 2
    assert capsys.readouterr().err.strip() == "penjing prune: error: model file missing.py not found"
