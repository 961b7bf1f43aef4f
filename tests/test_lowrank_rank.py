"""Rank selection: energy, explicit ranks, the global budget (params and MACs, with and
without measured sensitivity), "only where it pays", and bad input with clear errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from penjing.low_rank import (
    LowRankConfig,
    budget_states,
    build_candidate,
    decompose_model,
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
    result = decompose_model(model, LowRankConfig(energy=0.3, layers="2"))
    assert result.ranks == {"2": expected}
    assert energy[expected - 1] >= 0.3 > energy[expected - 2]
    # the reported error is the discarded energy, exactly
    assert result.layers[0].error == pytest.approx(float((1 - energy[expected - 1]).sqrt()), rel=1e-6)


def test_a_rank_that_does_not_pay_keeps_the_layer_dense_with_a_reason():
    model = mlp()
    # 60x50: pays while r * (60 + 50) < 3000, i.e. r <= 27
    result = decompose_model(model, LowRankConfig(rank={"2": 28}))
    row = {r.name: r for r in result.layers}["2"]
    assert row.rank is None and row.reason == "rank 28 does not pay (3,080 vs 3,000 parameters)"
    assert row.break_even == 27
    assert isinstance(model[2], nn.Linear)
    result = decompose_model(model, LowRankConfig(rank={"2": 27}))
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
    result = decompose_model(model, LowRankConfig(params=fraction), example=torch.randn(1, 3, 8, 8))
    kept = sum(p.numel() for p in model.parameters())
    assert result.params_after == kept <= fraction * total
    # one more singular value in the most expensive layer would not fit
    assert kept > fraction * total - (16 * 27 + 32 * 144)


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
        result = decompose_model(model, LowRankConfig(flops=0.6, method=method), example=example)
        assert result.flops_after <= 0.6 * result.flops_before
        assert result.flop_ratio == pytest.approx(result.flops_after / result.flops_before)
        assert any(r.rank is not None for r in result.layers)


def test_bigger_budget_means_less_error():
    errors = []
    for fraction in (0.2, 0.35, 0.5, 0.7):
        model = convnet()
        errors.append(total_error(decompose_model(model, LowRankConfig(params=fraction), example=torch.randn(1, 3, 8, 8))))
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors


def test_sensitivity_is_measured_on_data_and_steers_the_budget():
    torch.manual_seed(0)
    model = mlp()
    x = torch.randn(256, 40)
    y = model(x).argmax(1)
    data = TensorDataset(x, y)
    cands = [build_candidate(n, m, "svd") for n, m in model.named_children() if isinstance(m, nn.Linear)]
    weights = measure(model, cands, data, samples=128, factorise=factorise)
    assert set(weights) == {"0", "2", "4"} and all(w > 0 for w in weights.values())
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU] * 2 + [nn.Linear]  # probes swapped back
    plain = decompose_model(mlp(), LowRankConfig(params=0.5))
    weighted = decompose_model(mlp(), LowRankConfig(params=0.5, sensitivity=True), data=data)
    assert weighted.params_after <= 0.5 * plain.params_before
    assert plain.ranks != weighted.ranks or weights == {k: 1.0 for k in weights}


# --- bad input -------------------------------------------------------------------------------

def test_rank_larger_than_min_out_in_is_an_error():
    with pytest.raises(ValueError, match=r"^rank 9 for layer '4' is larger than min\(out, in\) = 8; "
                       r"choose rank <= 8 or exclude the layer$"):
        decompose_model(mlp(), LowRankConfig(rank=9))
    with pytest.raises(ValueError, match=r"larger than min\(out, in\) = 16 of its channel-split matrix \(16x27\)"):
        decompose_model(convnet(), LowRankConfig(rank=17, layers="0"))
    with pytest.raises(ValueError, match=r"tucker ranks are \(r_in <= 3, r_out <= 16\)"):
        decompose_model(convnet(), LowRankConfig(rank=4, layers="0", method="tucker"))


@pytest.mark.parametrize("energy", [0, -0.1, 1.5])
def test_energy_outside_zero_one_is_an_error(energy):
    with pytest.raises(ValueError, match=rf"^energy must be in \(0, 1\], got {energy}$"):
        LowRankConfig(energy=energy)


def test_unreachable_budget_is_an_error():
    model = convnet()
    with pytest.raises(ValueError, match=r"^a budget of 1\.0% of the parameters cannot be met: at rank 1 "
                       r"in every selected layer the model still has [\d,]+ of 7,978 parameters"):
        decompose_model(model, LowRankConfig(params=0.01))
    # 30% is reachable with every layer, not with the 2,890-parameter classifier left dense
    with pytest.raises(ValueError, match="cannot be met"):
        decompose_model(convnet(), LowRankConfig(params=0.3, exclude="5"))
    assert all(not hasattr(m, "rank") for m in model)  # nothing was swapped


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"params": 0.5, "energy": 0.9}, "set one of rank, energy, params, flops; got energy, params"),
    ({"params": 1.5}, "params is the fraction of the model's params to keep and must be in (0, 1], got 1.5"),
    ({"flops": 0.0}, "flops is the fraction of the model's flops to keep and must be in (0, 1], got 0.0"),
    ({"rank": 0}, "rank must be a positive int (or an (r_in, r_out) pair for tucker), got 0"),
    ({"method": "qr"}, "unknown conv method 'qr'; choose one of channel, spatial, tucker, cp"),
])
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError) as info:
        LowRankConfig(**kwargs)
    assert str(info.value) == message


def test_errors_that_need_the_model():
    with pytest.raises(ValueError, match=r"^a flops budget needs an example input to count MACs: pass example= or data=$"):
        decompose_model(convnet(), LowRankConfig(flops=0.5))
    with pytest.raises(ValueError, match=r"^sensitivity=True measures each layer's loss on data: pass data=$"):
        decompose_model(mlp(), LowRankConfig(params=0.5, sensitivity=True))
    with pytest.raises(ValueError, match=r"^method 'cp' has no singular values to choose a rank from \(energy=...\); "
                       r"give an explicit rank for layer '0'$"):
        decompose_model(convnet(), LowRankConfig(energy=0.9, method="cp"))
    with pytest.raises(ValueError, match=r"^no layer selected"):
        decompose_model(mlp(), LowRankConfig(rank=2, layers="nothing*"))
