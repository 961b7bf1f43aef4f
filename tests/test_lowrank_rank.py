"""Rank selection: energy, explicit ranks, the global budget (params and MACs, with and
without measured sensitivity), "only where it pays", and bad input with clear errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lowrank_plans import decompose
from penjing.core.report import last_report
from penjing.low_rank import (
    LowRankConfig,
    budget_states,
    build_candidate,
    factorise,
    lowrank,
)
from penjing.low_rank.sensitivity import measure

torch.set_num_threads(1)


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(40, 60), nn.ReLU(), nn.Linear(60, 50), nn.ReLU(), nn.Linear(50, 8))


def convnet(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(32 * 3 * 3, 10))


def total_error(result) -> float:
    return sum(r.error**2 for r in result.layers if r.rank is not None)


# --- energy and explicit rank -------------------------------------------------------------------

def test_energy_picks_the_smallest_rank_that_keeps_the_fraction():
    model = mlp()
    s = torch.linalg.svdvals(model[2].weight.detach().double())
    energy = torch.cumsum(s**2, 0) / (s**2).sum()
    expected = int((energy < 0.3).sum()) + 1
    result = decompose(model, LowRankConfig(energy=0.3, layers="2"))
    assert result.ranks == {"2": expected}
    assert energy[expected - 1] >= 0.3 > energy[expected - 2]
    # the reported error is the discarded energy, exactly
    assert result.layers[0].error == pytest.approx(float((1 - energy[expected - 1]).sqrt()), rel=1e-6)


def test_a_rank_that_does_not_pay_keeps_the_layer_dense_with_a_reason():
    model = mlp()
    # 60x50: pays while r * (60 + 50) < 3000, i.e. r <= 27
    with pytest.warns(UserWarning, match=r"^penjing.lowrank: no layer was changed \(3 skipped"):
        result = decompose(model, LowRankConfig(rank={"2": 28}))
    row = {r.name: r for r in result.layers}["2"]
    assert row.rank is None and row.reason == "rank 28 does not pay (3,080 vs 3,000 parameters)"
    assert row.break_even == 27
    assert isinstance(model[2], nn.Linear)
    result = decompose(model, LowRankConfig(rank={"2": 27}))
    assert result.ranks == {"2": 27}


def test_lowrank_verb_swaps_in_place_and_returns_the_model():
    model = mlp()
    out = lowrank(model, LowRankConfig(rank=4, exclude="4"))
    assert out is model
    assert [type(m).__name__ for m in model] == ["LowRankLinear", "ReLU", "LowRankLinear", "ReLU", "Linear"]


# --- the global budget ---------------------------------------------------------------------------

@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_params_budget_is_met_and_mostly_used(fraction):
    model = convnet()
    total = sum(p.numel() for p in model.parameters())
    weights = sum(m.weight.numel() for m in model if hasattr(m, "weight"))  # 7,920: the budget's base
    result = decompose(model, LowRankConfig(params=fraction), example_inputs=torch.randn(1, 3, 8, 8))
    kept = sum(p.numel() for p in model.parameters())
    assert result.budget_before == weights and result.budget_after <= fraction * weights
    # the model drops by exactly what the factorised weights dropped (biases unchanged)
    assert result.params_after == kept == total - (weights - result.budget_after)
    # one more singular value in the most expensive layer would not fit
    assert result.budget_after > fraction * weights - (16 * 27 + 32 * 144)


def test_budget_greedy_matches_exhaustive_search_on_two_layers():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(30, 24), nn.Linear(24, 20))
    for layer in model:  # decaying spectra, like trained weights
        u, _, vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
        s = torch.logspace(0, -2, len(vh)) * torch.rand(len(vh)).add(0.5)
        with torch.no_grad():
            layer.weight.copy_(u @ torch.diag(s.sort(descending=True).values) @ vh)
    cands = [build_candidate(n, m, "svd") for n, m in model.named_children()]
    total = sum(p.numel() for p in model.parameters())
    fixed = total - sum(c.params(None) for c in cands)
    for fraction in (0.3, 0.45, 0.6):
        states = budget_states(cands, metric="params", fraction=fraction, total=total, fixed=fixed)
        greedy = sum(c.error(states[c.name]) for c in cands)
        best = min(
            sum(c.error(s) for c, s in zip(cands, combo, strict=True))
            for combo in itertools.product(*[[None, *range(1, c.max_rank + 1)] for c in cands])
            if fixed + sum(c.params(s) for c, s in zip(cands, combo, strict=True)) <= fraction * total
            and all(s is None or c.pays(s) for c, s in zip(cands, combo, strict=True))
        )
        assert greedy <= best * 1.05 + 1e-9, (fraction, greedy, best)


def test_flops_budget_cuts_macs_and_spatial_split_counts_its_full_width_pass():
    example = torch.randn(1, 3, 8, 8)
    for method in ("channel", "spatial", "tucker"):
        model = convnet()
        result = decompose(model, LowRankConfig(flops=0.6, conv_method=method), example_inputs=example)
        assert result.flops_after <= 0.6 * result.flops_before
        assert result.flop_ratio == pytest.approx(result.flops_after / result.flops_before)
        assert any(r.rank is not None for r in result.layers)


def test_bigger_budget_means_less_error():
    errors = []
    for fraction in (0.2, 0.35, 0.5, 0.7):
        model = convnet()
        errors.append(total_error(decompose(model, LowRankConfig(params=fraction), example_inputs=torch.randn(1, 3, 8, 8))))
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors


def test_sensitivity_is_measured_on_data_and_steers_the_budget():
    """The weights equal a by-hand recomputation (probe each layer alone, loss increase per unit
    of squared error, normalised to mean 1), differ between layers, and change the ranks: a
    measure() that does nothing (all weights 1) fails every assertion here."""
    import copy

    import torch.nn.functional as F

    from penjing.low_rank.sensitivity import FLOOR, probe_state

    torch.manual_seed(0)
    model = mlp()
    x = torch.randn(256, 40)
    y = model(x).argmax(1)
    data = TensorDataset(x, y)
    cands = [build_candidate(n, m, "svd") for n, m in model.named_children() if isinstance(m, nn.Linear)]
    weights = measure(model, cands, data, samples=128, factorise=factorise)
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU] * 2 + [nn.Linear]  # probes swapped back
    with torch.no_grad():
        base = float(F.cross_entropy(model(x[:128]), y[:128]))
        raw = {}
        for cand in cands:
            state = probe_state(cand)
            probe = copy.deepcopy(model)
            probe[int(cand.name)] = factorise(cand, state)
            raw[cand.name] = max(0.0, float(F.cross_entropy(probe(x[:128]), y[:128])) - base) / cand.error(state)
    mean = sum(raw.values()) / len(raw)
    assert weights == pytest.approx({k: max(FLOOR, v / mean) for k, v in raw.items()}, rel=1e-9)
    assert max(weights.values()) > 1.5 * min(weights.values())
    assert all(c.weight_sensitivity == weights[c.name] for c in cands)
    plain = decompose(mlp(), LowRankConfig(params=0.5))
    weighted_model = mlp()
    weighted = decompose(weighted_model, LowRankConfig(params=0.5, sensitivity=True), data=data)
    assert last_report(weighted_model).extra["sensitivity"] == pytest.approx(
        measure(mlp(), [build_candidate(n, m, "svd") for n, m in mlp().named_children()
                        if isinstance(m, nn.Linear)], data, samples=256, factorise=factorise))
    assert weighted.budget_after <= 0.5 * plain.budget_before
    assert plain.ranks != weighted.ranks
    # the least sensitive layer gives up singular values to the others
    low = min(weights, key=weights.get)
    assert weighted.ranks[low] < plain.ranks[low]


# --- bad input -------------------------------------------------------------------------------

def test_rank_larger_than_min_out_in_is_an_error():
    with pytest.raises(ValueError, match=r"^rank 9 for layer '4' is larger than min\(out, in\) = 8; "
                       r"choose rank <= 8 or exclude the layer$"):
        decompose(mlp(), LowRankConfig(rank=9))
    with pytest.raises(ValueError, match=r"larger than min\(out, in\) = 16 of its channel-split matrix \(16x27\)"):
        decompose(convnet(), LowRankConfig(rank=17, layers="0"))
    with pytest.raises(ValueError, match=r"tucker ranks are \(r_in <= 3, r_out <= 16\)"):
        decompose(convnet(), LowRankConfig(rank=4, layers="0", conv_method="tucker"))


@pytest.mark.parametrize("energy", [0, -0.1, 1.5])
def test_energy_outside_zero_one_is_an_error(energy):
    with pytest.raises(ValueError, match=rf"^LowRankConfig.energy must be in \(0, 1\], got {energy}$"):
        LowRankConfig(energy=energy)


def test_unreachable_budget_is_an_error():
    model = convnet()
    # the budget is over the three layers' 7,920 weights (biases are not in it)
    with pytest.raises(ValueError, match=r"^a budget of 1\.0% of the factorisable layers' parameters cannot "
                       r"be met: at rank 1 in every one of them [\d,]+ of 7,920 parameters are left"):
        decompose(model, LowRankConfig(params=0.01))
    # a conv of 432 weights: its rank 1 (16 + 27) is 10% of it, so 5% cannot be met
    with pytest.raises(ValueError, match="cannot be met"):
        decompose(convnet(), LowRankConfig(params=0.05, layers="0"))
    assert all(not hasattr(m, "rank") for m in model)  # nothing was swapped


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"params": 0.5, "energy": 0.9}, "LowRankConfig: set one of rank, energy, params, flops; got energy, params"),
    ({"params": 1.5}, "LowRankConfig.params is the fraction of the factorisable layers' params to keep and "
                      "must be in (0, 1], got 1.5"),
    ({"flops": 0.0}, "LowRankConfig.flops is the fraction of the factorisable layers' flops to keep and "
                     "must be in (0, 1], got 0.0"),
    ({"rank": 0}, "LowRankConfig.rank must be a positive int (or an (r_in, r_out) pair for tucker), got 0"),
    ({"conv_method": "qr"}, "LowRankConfig.conv_method: unknown conv method 'qr'; choose one of channel, "
                            "spatial, tucker, cp"),
    ({"rank": {"fc*": 4, "x": -1}}, "LowRankConfig.rank must be a positive int (or an (r_in, r_out) pair for "
                                    "tucker), got -1"),
])
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError) as info:
        LowRankConfig(**kwargs)
    assert str(info.value) == message


def test_errors_that_need_the_model():
    with pytest.raises(ValueError, match=r"^a flops budget needs an example input to count MACs: pass example_inputs= or data=$"):
        decompose(convnet(), LowRankConfig(flops=0.5))
    with pytest.raises(ValueError, match=r"^sensitivity=True measures each layer's loss on data: pass data=$"):
        decompose(mlp(), LowRankConfig(params=0.5, sensitivity=True))
    with pytest.raises(ValueError, match=r"^method 'cp' has no singular values to choose a rank from \(energy=...\); "
                       r"give an explicit rank for layer '0'$"):
        decompose(convnet(), LowRankConfig(energy=0.9, conv_method="cp"))
    with pytest.raises(ValueError, match=r"^lowrank: layers entry 'nothing\*' matches no layer with weights; "
                                         r"the weighted layers are 0, 2, 4$"):
        decompose(mlp(), LowRankConfig(rank=2, layers="nothing*"))
    with pytest.raises(ValueError, match=r"^LowRankConfig.rank: key 'fc9' matches no layer; the layers are 0, 2, 4$"):
        decompose(mlp(), LowRankConfig(rank={"fc9": 2, "*": 3}))
    with pytest.raises(ValueError, match=r"^lowrank: layer 0 \(Conv2d\) was selected but depthwise conv"):
        decompose(nn.Sequential(nn.Conv2d(4, 4, 3, groups=4)), LowRankConfig(rank=1, layers="0"))
