"""Pruning masks: W = M * V as a parametrization; unstructured, global, quality and N:M masks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import penjing as pj
from penjing.core.params import bake, original, parametrizations
from penjing.core.report import last_report
from penjing.core.stats import layer_stats
from penjing.pruning import Mask, PruneConfig, get_mask, prune


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 24), nn.ReLU(),
                         nn.Linear(24, 10))


def zeros(module: nn.Module) -> int:
    return int((module.weight == 0).sum())


def test_mask_is_a_parametrization_with_a_buffer_and_no_bits():
    model = mlp()
    dense = model[1].weight.detach().clone()
    prune(model, PruneConfig(sparsity=0.75))
    layer = model[1]
    mask = get_mask(layer)
    assert isinstance(mask, Mask) and parametrizations(layer) == [mask]
    assert getattr(mask, "bits", None) is None
    # W = M * V, the dense V kept underneath
    assert torch.equal(original(layer), dense)
    assert torch.equal(layer.weight, dense * mask.mask)
    assert "1.parametrizations.weight.0.mask" in model.state_dict()
    assert [r.bits for r in layer_stats(model)] == [32.0, 32.0, 32.0]


def test_per_layer_sparsity_is_exact_and_keeps_the_largest_weights():
    model = mlp()
    dense = copy.deepcopy(model)
    prune(model, PruneConfig(sparsity=0.6))
    for i in (1, 3, 5):
        w, d = model[i].weight.detach(), dense[i].weight.detach()
        assert zeros(model[i]) == round(0.6 * w.numel())
        kept, dropped = d[w != 0].abs(), d[w == 0].abs()
        assert kept.min() >= dropped.max()


def test_global_scope_uses_one_threshold_across_layers():
    model = mlp()
    dense = copy.deepcopy(model)
    prune(model, PruneConfig(sparsity=0.8, scope="global"))
    layers = (1, 3, 5)
    total = sum(model[i].weight.numel() for i in layers)
    assert sum(zeros(model[i]) for i in layers) == round(0.8 * total)
    kept = torch.cat([dense[i].weight.detach()[model[i].weight != 0].abs() for i in layers])
    dropped = torch.cat([dense[i].weight.detach()[model[i].weight == 0].abs() for i in layers])
    assert kept.min() >= dropped.max()
    # the per-layer sparsities differ (that is the point of a global threshold)
    assert len({zeros(model[i]) / model[i].weight.numel() for i in layers}) == 3


def test_quality_threshold_is_quality_times_std():
    model = mlp()
    dense = copy.deepcopy(model)
    prune(model, PruneConfig(quality=0.7))
    for i in (1, 3, 5):
        w = dense[i].weight.detach()
        expected = w.abs() >= 0.7 * w.std()
        assert torch.equal(model[i].weight != 0, expected)


def test_global_quality_is_one_threshold_over_all_layers():
    """Han's rule with scope='global': |w| >= quality x the std of every selected weight pooled."""
    model = mlp()
    dense = copy.deepcopy(model)
    prune(model, PruneConfig(quality=0.7, scope="global"))
    pooled = torch.cat([dense[i].weight.detach().flatten() for i in (1, 3, 5)])
    threshold = 0.7 * pooled.std()
    for i in (1, 3, 5):
        assert torch.equal(model[i].weight != 0, dense[i].weight.detach().abs() >= threshold)
    # not the per-layer rule: some layer's mask differs from its own-std threshold
    assert any(not torch.equal(model[i].weight != 0, dense[i].weight.abs() >= 0.7 * dense[i].weight.std())
               for i in (1, 3, 5))


def test_per_layer_dict_prunes_matched_layers_and_leaves_the_rest_dense():
    model = mlp()
    prune(model, PruneConfig(sparsity={"1": 0.9, "Linear": 0.5}))  # first matching key wins
    assert zeros(model[1]) == round(0.9 * 64 * 48)
    assert zeros(model[3]) == round(0.5 * 48 * 24)
    model = mlp()
    prune(model, PruneConfig(sparsity={"3": 0.5}))
    assert get_mask(model[1]) is None and get_mask(model[5]) is None
    assert zeros(model[3]) == round(0.5 * 48 * 24)
    skipped = {s.name: s.reason for s in last_report(model).skipped}
    assert skipped == {"1": "no key of PruneConfig.sparsity matches it",
                       "5": "no key of PruneConfig.sparsity matches it"}


def test_per_layer_roles_first_last_and_star():
    model = mlp()
    prune(model, PruneConfig(sparsity={"first": 0.9, "last": 0.5, "*": 0.7}))
    assert [zeros(model[i]) for i in (1, 3, 5)] == [round(0.9 * 64 * 48), round(0.7 * 48 * 24),
                                                    round(0.5 * 24 * 10)]
    with pytest.raises(ValueError, match=r"^PruneConfig.sparsity: key 'fc9' matches no layer; the "
                                         r"layers are 1, 3, 5$"):
        prune(mlp(), PruneConfig(sparsity={"fc9": 0.5, "*": 0.5}))


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (2, 8)])
def test_n_m_keeps_exactly_n_of_every_m_along_the_input_dimension(n, m):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Flatten(), nn.Linear(16 * 36, 32))
    prune(model, PruneConfig(granularity=f"{n}:{m}"))
    linear = model[2].weight.detach()
    groups = (linear == 0).reshape(32, -1, m).sum(-1)
    assert torch.all(groups == m - n)
    conv = model[0].weight.detach()  # (out, in, kh, kw): groups run over input channels
    groups = (conv.movedim(1, -1) == 0).reshape(-1, m).sum(-1)
    assert torch.all(groups == m - n)


def test_two_four_is_along_inputs_not_outputs():
    layer = nn.Linear(4, 8)
    with torch.no_grad():  # each row: two big inputs, two small ones, at shifting positions
        layer.weight.copy_(torch.tensor([[5.0, 4.0, 0.1, 0.2]]).repeat(8, 1).roll(1, 1))
    prune(layer, PruneConfig(granularity="2:4"))
    assert torch.equal(layer.weight != 0, torch.tensor([[False, True, True, False]]).repeat(8, 1))


def test_n_m_skips_layers_whose_input_is_not_a_multiple_of_m():
    model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 4))
    prune(model, PruneConfig(granularity="2:4"))
    assert get_mask(model[0]) is None and get_mask(model[1]) is not None
    [skip] = last_report(model).skipped
    assert (skip.name, skip.reason) == ("0", "its input dimension 6 is not a multiple of M=4")
    with pytest.raises(ValueError, match=r"^prune: layer 0 \(Linear\) was selected but its input "
                                         r"dimension 6 is not a multiple of M=4"):
        prune(nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 4)), PruneConfig(granularity="2:4", layers="0"))


def test_n_m_on_conv_transpose_groups_its_input_axis_zero():
    """ConvTranspose2d keeps its weight as (in, out, kh, kw): groups of M run along axis 0."""
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(8, 3, 2)
    prune(layer, PruneConfig(granularity="2:4"))
    w = layer.weight.detach()
    assert torch.all((w.movedim(0, -1) == 0).reshape(-1, 4).sum(-1) == 2)


def test_fit_keeps_pruned_weights_zero_and_bake_gives_plain_tensors():
    model = mlp()
    prune(model, PruneConfig(sparsity=0.7))
    pruned = [model[i].weight.detach() == 0 for i in (1, 3, 5)]
    before = model[1].weight.detach().clone()
    x, y = torch.rand(128, 1, 8, 8), torch.randint(0, 10, (128,))
    pj.fit(model, torch.utils.data.TensorDataset(x, y), epochs=2, lr=1e-2, progress=False)
    for i, p in zip((1, 3, 5), pruned, strict=True):
        assert torch.all(model[i].weight[p] == 0)
    assert not torch.equal(model[1].weight.detach(), before)  # the survivors did train
    out = model(x)
    bake(model)
    assert isinstance(model[1].weight, nn.Parameter) and not parametrizations(model[1])
    assert torch.allclose(model(x), out)
    assert zeros(model[1]) == round(0.7 * 64 * 48)


def test_pruning_again_only_removes_more():
    model = mlp()
    prune(model, PruneConfig(sparsity=0.5))
    first = model[1].weight.detach() == 0
    prune(model, PruneConfig(sparsity=0.8))
    assert len(parametrizations(model[1])) == 1  # the mask is updated, not stacked
    assert torch.all((model[1].weight == 0)[first])
    assert zeros(model[1]) == round(0.8 * 64 * 48)
    prune(model, PruneConfig(sparsity=0.3))  # lower target: nothing revives
    assert zeros(model[1]) == round(0.8 * 64 * 48)


def test_works_on_a_bare_layer_and_a_user_sequential_with_batchnorm():
    layer = nn.Linear(10, 10)
    prune(layer, sparsity=0.5)
    assert zeros(layer) == 50
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 36, 10))
    prune(model, PruneConfig(sparsity=0.5))
    assert zeros(model[0]) == 27 and zeros(model[4]) == round(0.5 * 2160)
    assert get_mask(model[1]) is None  # BatchNorm is not a default target
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
