"""The measured pruning budget (``sparsity: auto`` with ``max_drop`` / ``target``): the greedy
path from a sensitivity scan, the closed loop on the validation split, and which recipe
`penjing compress --model X` picks."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from penjing.commands.compress import AUTO_RECIPE, recipe_name
from penjing.core.sensitivity import budget_at, budget_path, measure
from penjing.recipe import Recipe, RecipeContext, RecipeError
from penjing.recipe.schema import step_module


def _scan(baseline, **curves):
    return SimpleNamespace(baseline=baseline, curves=curves)


def test_path_takes_the_cheapest_drop_per_unit_saved_first():
    sizes = {"a": 100, "b": 10}
    scan = _scan(1.0, a=[(0.5, 1.0), (0.9, 0.9)], b=[(0.5, 0.95), (0.9, 0.94)])
    path = budget_path(scan, saving=lambda n, s: s * sizes[n])
    # a's first move is free; then a's second (0.1 / 40 weights) ties b's second in cost per
    # weight but b must take its first move (0.05 / 5) before: a goes on
    assert [(p.layer, p.setting) for p in path] == [("a", 0.5), ("a", 0.9), ("b", 0.5), ("b", 0.9)]
    assert [p.saved for p in path] == pytest.approx([50, 90, 95, 99])
    assert [p.drop for p in path] == pytest.approx([0.0, 0.1, 0.15, 0.16])
    assert budget_at(path, 60, ["a", "b"], none=0.0) == {"a": 0.9, "b": 0.0}
    assert budget_at(path, 1000, ["a", "b"], none=0.0) == {"a": 0.9, "b": 0.9}  # the whole path


def test_path_never_counts_a_noisy_rise_as_a_gain_and_advances_free_layers_together():
    sizes = {"a": 10, "b": 10, "c": 10}
    scan = _scan(1.0, a=[(0.5, 1.0), (0.9, 1.0)], b=[(0.5, 1.0), (0.9, 1.0)],
                 c=[(0.5, 0.8), (0.9, 0.85)])  # c: 0.9 measured better than 0.5 (noise)
    path = budget_path(scan, saving=lambda n, s: s * sizes[n])
    assert [(p.layer, p.setting) for p in path[:4]] == [("a", 0.5), ("b", 0.5), ("a", 0.9), ("b", 0.9)]
    assert path[-1].drop == pytest.approx(0.2)  # c's drop stays 0.2, not 0.15, at 0.9
    assert [p.layer for p in path[4:]] == ["c", "c"]


class DeadBranch(nn.Module):
    """``core`` and ``head`` compute the output; ``dead``'s output is multiplied by zero, so
    pruning it costs nothing: a budget that follows sensitivity prunes it first and most."""

    def __init__(self) -> None:
        super().__init__()
        self.core = nn.Linear(8, 12)
        self.dead = nn.Linear(8, 64)
        self.head = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.core(x))) + 0 * self.dead(x)[:, :4]


def _teacher_data():
    """The dense model labels its own inputs: it is exactly right (accuracy 1.0) on val."""
    torch.manual_seed(0)
    model = DeadBranch()
    x = torch.randn(1400, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    train, val = TensorDataset(x[:1000], y[:1000]), TensorDataset(x[1000:], y[1000:])
    # a test split with random labels: any choice made on it would be made on noise
    garbage = TensorDataset(torch.randn(400, 8), torch.randint(0, 4, (400,)))
    return model, train, val, garbage


def _run_prune(model, fields, tmp_path):
    _, train, val, garbage = _teacher_data()
    recipe = Recipe.from_dict({"steps": [{"prune": fields}]})
    step = recipe.steps[0]
    ctx = RecipeContext(train=train, test=garbage, val=val, out_dir=tmp_path, progress=False,
                        echo=False)
    step_module("prune").run(model, step.params, step.options, ctx)
    return ctx


def _sparsity(module: nn.Module) -> float:
    return float((module.weight == 0).float().mean())


def test_budget_follows_sensitivity_and_holds_the_validation_tolerance(tmp_path):
    model, _, val, _ = _teacher_data()
    ctx = _run_prune(model, {"sparsity": "auto", "max_drop": 1.0, "schedule": "iterative",
                             "rounds": 8, "finetune_epochs": 0}, tmp_path)
    chosen = ctx.artifacts["prune_budget"]["sparsity"]
    assert ctx.artifacts["prune_budget"]["val_baseline"] == 1.0
    # core and head lose >= 2 val points at their first 10% (measured: 97.75%, 98.00%): the
    # budget spends itself on the free branch
    assert chosen == {"core": 0.0, "dead": 0.95, "head": 0.0}
    for name, layer in (("core", model.core), ("dead", model.dead), ("head", model.head)):
        assert _sparsity(layer) == pytest.approx(chosen[name], abs=1 / layer.weight.numel())
    # rounds 1-3 (31%, 53%, 67% of the 656 weights) fit in dead alone; round 4 (78%) needs
    # core and is undone; the halfway round (73%) takes dead to 95%, the next (75%) is undone
    assert ctx.artifacts["prune_budget"]["first_undone_round"] == 4
    assert 100 * (1.0 - measure(model, val)) <= 1.0  # the tolerance, on the validation split
    section = ctx.artifacts["sections"][-1]
    assert "max_drop 1 validation points" in section and "| dead | 512 | 95% |" in section


def test_a_round_over_the_tolerance_is_undone(tmp_path):
    """max_drop 0: the free rounds (the dead branch) stay, the first costly one is undone, and
    the model is exactly as accurate on val as the dense one."""
    model, _, val, _ = _teacher_data()
    ctx = _run_prune(model, {"sparsity": "auto", "max_drop": 0.0, "schedule": "iterative",
                             "rounds": 6, "finetune_epochs": 0}, tmp_path)
    budget = ctx.artifacts["prune_budget"]
    assert budget["first_undone_round"] is not None
    assert measure(model, val) == 1.0
    assert _sparsity(model.dead) > 0.5  # the free part was kept
    assert _sparsity(model.core) == pytest.approx(budget["sparsity"]["core"], abs=1 / 96)


def test_target_reaches_the_overall_sparsity(tmp_path):
    model, _, _, _ = _teacher_data()
    _run_prune(model, {"sparsity": "auto", "target": 0.5, "schedule": "iterative", "rounds": 2,
                       "finetune_epochs": 0}, tmp_path)
    layers = [model.core, model.dead, model.head]
    total = sum(m.weight.numel() for m in layers)
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    # the path's last move overshoots by at most one scanned step of the largest layer
    assert 0.5 <= zeros / total <= 0.5 + 0.1 * 512 / total + 1e-9


def test_budget_fields_refused_without_auto_or_out_of_range(tmp_path):
    model, _, _, _ = _teacher_data()
    with pytest.raises(ValueError, match=r"^prune: max_drop and target budget sparsity: auto; "
                       r"with a given sparsity \(0\.5\) leave them out$"):
        _run_prune(copy.deepcopy(model), {"sparsity": 0.5, "max_drop": 1.0}, tmp_path)
    with pytest.raises(RecipeError, match=r"step 1 \(prune\): target \(overall sparsity\) must be "
                       r"a number in \(0, 1\), got 1\.5"):
        Recipe.from_dict({"steps": [{"prune": {"sparsity": "auto", "target": 1.5}}]})
    with pytest.raises(RecipeError, match=r"max_drop \(validation accuracy points\) must be a "
                       r"number >= 0, got -1"):
        Recipe.from_dict({"steps": [{"prune": {"sparsity": "auto", "max_drop": -1}}]})


def test_compress_picks_the_measured_budget_for_models_without_a_recipe():
    assert recipe_name("deep_compression", None) == "deep_compression"  # LeNet-300-100, unchanged
    assert recipe_name("deep_compression", "lenet300") == "deep_compression"
    assert recipe_name("deep_compression", "lenet5") == "deep_compression_lenet5"
    assert recipe_name("deep_compression", "my.py:MyNet") == AUTO_RECIPE
    assert recipe_name("deep_compression", "resnet") == AUTO_RECIPE
    assert recipe_name("iterative_pruning", "my.py:MyNet") == "iterative_pruning"
