"""Schedules (one-shot, iterative, polynomial), sensitivity analysis, and real accuracy on digits."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import penjing as pj
from penjing.core.report import last_report
from penjing.models import LeNet300
from penjing.pruning import (
    PolynomialPruning,
    PruneConfig,
    polynomial_sparsity,
    prune,
    round_sparsity,
    sensitivity_scan,
)


@pytest.fixture(scope="module")
def trained(digits_data):
    """LeNet-300-100 trained briefly on the bundled digits (a real, if small, baseline)."""
    train, test = digits_data
    torch.manual_seed(0)
    model = LeNet300()
    pj.fit(model, train, epochs=12, lr=1e-3, progress=False)
    return model, train, test


def test_iterative_sparsity_shrinks_the_kept_fraction_geometrically():
    levels = [round_sparsity(0.92, r / 4) for r in range(1, 5)]
    kept = [1 - s for s in levels]
    assert levels[-1] == pytest.approx(0.92)
    ratios = [kept[i + 1] / kept[i] for i in range(3)]
    assert ratios == pytest.approx([0.08 ** 0.25] * 3)


def test_polynomial_sparsity_follows_zhu_and_gupta():
    assert polynomial_sparsity(0, 0.9, 0.1, 10, 110) == 0.1
    assert polynomial_sparsity(10, 0.9, 0.1, 10, 110) == 0.1
    assert polynomial_sparsity(60, 0.9, 0.1, 10, 110) == pytest.approx(0.9 + (0.1 - 0.9) * 0.5 ** 3)
    assert polynomial_sparsity(110, 0.9, 0.1, 10, 110) == 0.9
    assert polynomial_sparsity(500, 0.9, 0.1, 10, 110) == 0.9


def test_polynomial_callback_prunes_during_fit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    data = TensorDataset(torch.rand(320, 1, 8, 8), torch.randint(0, 10, (320,)))
    config = PruneConfig(sparsity=0.75, schedule="polynomial", finetune_epochs=4, end=0.5, frequency=4)
    callback = PolynomialPruning(model, config, total_steps=4 * 10)
    pj.fit(model, data, epochs=4, batch_size=32, callbacks=[callback], progress=False)
    steps = [s for s, _ in callback.history]
    levels = [s for _, s in callback.history]
    assert steps == [0, 4, 8, 12, 16, 20]  # every `frequency` steps until end = 0.5 * 40
    assert levels == sorted(levels) and levels[0] == 0.0 and levels[-1] == 0.75
    assert int((model[1].weight == 0).sum()) == round(0.75 * 64 * 32)


def test_iterative_rounds_only_add_to_the_mask(trained):
    model, train, _test = copy.deepcopy(trained[0]), trained[1], trained[2]
    seen = []

    def log(m, info):
        seen.append((info.kept, (m.fc2.weight == 0).clone()))

    prune(model, PruneConfig(sparsity=0.9, schedule="iterative", rounds=3, finetune_epochs=1,
                             on_round=log), data=train, progress=False)
    assert [round(k, 3) for k, _ in seen] == [round(1 - round_sparsity(0.9, r / 3), 3) for r in (1, 2, 3)]
    for (_, before), (_, after) in zip(seen, seen[1:], strict=False):
        assert torch.all(after[before])


def test_iterative_pruning_keeps_accuracy_on_digits(trained):
    """Real data, real training: 85% of LeNet-300-100 pruned in 3 rounds with fine-tuning
    stays within 1.5 points of the (briefly trained) dense model."""
    dense, train, test = trained
    model = copy.deepcopy(dense)
    before = pj.evaluate(dense, test)
    prune(model, PruneConfig(sparsity=0.85, scope="global", schedule="iterative", rounds=3,
                             finetune_epochs=3), data=train, progress=False)
    stats = pj.summary(model, test)
    assert stats.nonzeros / stats.params == pytest.approx(0.15, abs=1e-4)
    assert stats.accuracy >= before - 0.015, (before, stats.accuracy)
    one_shot = copy.deepcopy(dense)
    prune(one_shot, PruneConfig(sparsity=0.85, scope="global"))
    assert pj.evaluate(one_shot, test) < stats.accuracy  # the retraining is what recovers it


def test_sensitivity_curves_and_suggestions(trained, tmp_path):
    model, _, test = trained
    state = copy.deepcopy(model.state_dict())
    result = sensitivity_scan(model, test, sparsities=[0.5, 0.9, 0.99], plot=tmp_path / "s.png")
    assert list(result.curves) == ["fc1", "fc2", "fc3"]
    assert all([s for s, _ in c] == [0.5, 0.9, 0.99] for c in result.curves.values())
    assert (tmp_path / "s.png").stat().st_size > 1000
    for key, value in model.state_dict().items():  # the model itself is untouched
        assert torch.equal(value, state[key])
    # pruning 99% of one layer hurts; 50% barely does
    assert all(dict(c)[0.99] < dict(c)[0.5] for c in result.curves.values())
    suggested = result.suggest(tolerance=1.0)
    for layer, curve in result.curves.items():
        ok = [s for s, acc in curve if 100 * (result.baseline - acc) <= 1.0 + 1e-9]
        assert suggested[layer] == max(ok, default=0.0)
    assert "| fc1 |" in result.to_markdown()
    # the suggestion is a valid per-layer config
    pruned = copy.deepcopy(model)
    prune(pruned, PruneConfig(sparsity={k: v for k, v in suggested.items() if v > 0}))


def test_structured_sensitivity_stops_at_the_classifier(trained):
    model, _, test = trained
    result = sensitivity_scan(model, test, sparsities=[0.5], granularity="channel")
    assert list(result.curves) == ["fc1", "fc2"]  # fc3's outputs are the model's outputs
    assert "fc3" in result.skipped


@pytest.mark.slow
def test_han_lenet300_keeps_8_percent_within_half_a_point(digits_data, tmp_path):
    """The must-show: the shipped iterative recipe keeps <= 8% of LeNet-300-100's weights with
    test accuracy within 0.5 points of the dense model."""
    from penjing.recipe import RecipeContext, load_recipe, run_recipe
    from penjing.recipe.schema import builtin_recipe

    train, test = digits_data
    model = pj.models.pretrained("lenet300", train, progress=False)
    ctx = RecipeContext(train=train, test=test, out_dir=tmp_path, progress=False, echo=False)
    result = run_recipe(load_recipe(builtin_recipe("iterative_pruning")), model, ctx)
    dense, final = result.summaries[0], result.final
    assert final.nonzeros / final.params <= 0.08
    assert final.accuracy >= dense.accuracy - 0.005, (dense.accuracy, final.accuracy)


def test_polynomial_schedule_through_prune(trained):
    model, train, test = copy.deepcopy(trained[0]), trained[1], trained[2]
    prune(model, PruneConfig(sparsity=0.8, schedule="polynomial", finetune_epochs=2, frequency=5),
          data=train, progress=False)
    seen = last_report(model).extra["rounds"]
    assert len(seen) == 1 and seen[0].kept == pytest.approx(0.2, abs=1e-4)
    assert pj.evaluate(model, test) >= pj.evaluate(trained[0], test) - 0.03


def test_recipe_step_sparsity_auto_uses_the_sensitivity_suggestions(trained, tmp_path):
    from penjing.recipe import RecipeContext, run_recipe
    from penjing.recipe.schema import Recipe

    model, train, test = copy.deepcopy(trained[0]), trained[1], trained[2]
    recipe = Recipe.from_dict({"steps": [{"prune": {"sparsity": "auto", "tolerance": 1.0}}]})
    ctx = RecipeContext(train=train, test=test, out_dir=tmp_path, progress=False, echo=False)
    result = run_recipe(recipe, model, ctx)
    # the choice is made on the validation split carved from train, never on test
    expected = sensitivity_scan(trained[0], ctx.val).suggest(1.0)
    kept = {r.name: r.kept for r in result.final.rows}
    for layer, s in expected.items():
        assert kept[layer] == pytest.approx(1 - s, abs=1e-3)
    assert "Pruning sensitivity, one layer at a time" in [t for t, _ in ctx.artifacts["plots"]]
    assert "## Pruning sensitivity" in result.report_path.read_text()
