"""The one way to walk and swap modules, parametrization helpers and size accounting."""

import pytest
import torch
from torch import nn

from penjing.core.params import attach, bake, original, parametrizations, remove
from penjing.core.select import select, swap
from penjing.core.stats import layer_stats


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 10))

    def forward(self, x):
        return self.head(x + self.bn(self.conv(x)))


class Scale(nn.Module):
    def __init__(self, factor, bits=None):
        super().__init__()
        self.factor = factor
        self.bits = bits

    def forward(self, w):
        return w * self.factor


def names(model, *args, **kwargs):
    return [n for n, _ in select(model, *args, **kwargs)]


def test_select_default_picks_weighted_layers():
    assert names(Residual()) == ["conv", "head.1"]


def test_select_by_glob_type_name_predicate_and_list():
    m = Residual()
    assert names(m, "head.*") == ["head.0", "head.1"]
    assert names(m, "*.weight", types=(nn.Linear,)) == ["head.1"]
    assert names(m, nn.BatchNorm2d) == ["bn"]
    assert names(m, "Conv2d") == ["conv"]
    assert names(m, lambda n, mod: isinstance(mod, nn.Linear)) == ["head.1"]
    assert names(m, ["conv", nn.Linear]) == ["conv", "head.1"]
    assert names(m, None, exclude="head.*") == ["conv"]


def test_select_rejects_unusable_selector():
    with pytest.raises(TypeError, match="cannot select layers with 3"):
        names(Residual(), 3)


def test_swap_replaces_nested_module_and_keeps_mode():
    m = Residual().eval()
    old = swap(m, "head.1", nn.Linear(256, 5))
    assert isinstance(old, nn.Linear) and old.out_features == 10
    assert m.head[1].out_features == 5 and not m.head[1].training
    assert m(torch.randn(2, 4, 8, 8)).shape == (2, 5)
    with pytest.raises(ValueError, match="cannot swap the root module"):
        swap(m, "", nn.Identity())


def test_parametrizations_stack_bake_and_remove():
    lin = nn.Linear(3, 2)
    dense = lin.weight.detach().clone()
    attach(lin, Scale(2.0))
    attach(lin, Scale(3.0, bits=5))
    assert [p.factor for p in parametrizations(lin)] == [2.0, 3.0]
    assert torch.equal(lin.weight, dense * 6)
    assert torch.equal(original(lin), dense)
    remove(lin, Scale)
    assert parametrizations(lin) == [] and torch.equal(lin.weight, dense)
    attach(lin, Scale(2.0))
    bake(lin)
    assert parametrizations(lin) == [] and isinstance(lin.weight, nn.Parameter)
    assert torch.equal(lin.weight, dense * 2)


def test_attach_to_layer_without_weight_is_a_clear_error():
    with pytest.raises(ValueError, match="ReLU has no parameter 'weight' to parametrize"):
        attach(nn.ReLU(), Scale(1.0))


def test_layer_stats_counts_zeros_bits_and_sparse_bytes():
    lin = nn.Linear(10, 10)
    with torch.no_grad():
        lin.weight[:, :8] = 0
    attach(lin, Scale(1.0, bits=5))
    (row,) = layer_stats(nn.Sequential(lin))
    assert (row.params, row.nonzeros, row.bits) == (100, 20, 5.0)
    assert row.bytes == 20 * (5 + 5) / 8  # value bits + 5-bit relative index for fc
    assert row.dense_bytes == 4 * 110


def test_baking_a_deepcopy_leaves_the_original_working():
    import copy

    model = nn.Sequential(nn.Linear(3, 2))
    attach(model[0], Scale(2.0))
    expected = model[0].weight.detach().clone()
    baked = bake(copy.deepcopy(model))
    assert parametrizations(baked[0]) == [] and torch.equal(baked[0].weight, expected)
    assert torch.equal(model[0].weight, expected)     # the original still parametrized
    remove(copy.deepcopy(model)[0], Scale)
    assert torch.equal(model[0].weight, expected)
