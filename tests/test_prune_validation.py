"""Nonsense amounts, poisoned weights, tied weights and meta-device models (issue 20 item 8):
refused with a clear message, or handled once."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from penjing.core.params import bake, parametrizations
from penjing.core.report import last_report
from penjing.pruning import PruneConfig, get_mask, prune
from penjing.sharing import ShareConfig, SharedWeight, share


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


@pytest.mark.parametrize(("config", "message"), [
    (PruneConfig(sparsity=0.999999), "prune: sparsity 0.999999 would remove every weight of layer 1 "
                                     "(Linear, 1024 weights); a layer keeps at least one weight"),
    (PruneConfig(quality=1e9), "prune: quality 1e+09 (threshold "),
    (PruneConfig(quality=1e9, scope="global"), "prune: the global quality 1e+09 (threshold "),
    (PruneConfig(sparsity=0.999999, scope="global"), "prune: sparsity 0.999999 would remove every "
                                                     "weight (1184 weights)"),
])
def test_amounts_that_remove_every_weight_of_a_layer_are_refused(config, message):
    model = mlp()
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        prune(model, config)
    assert all(not parametrizations(m) for m in model.modules())  # refused before any change


def test_quality_inf_is_refused_by_the_config():
    with pytest.raises(ValueError, match=r"must be a finite number > 0, got inf$"):
        PruneConfig(quality=float("inf"))


def test_one_weight_kept_is_allowed():
    layer = nn.Linear(4, 1)
    prune(layer, PruneConfig(sparsity=0.8))  # round(3.2) = 3 of 4 removed
    assert int((layer.weight != 0).sum()) == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("verb", ["prune", "share"])
def test_a_nan_or_inf_weight_is_refused_naming_the_layer(bad, verb):
    model = mlp()
    with torch.no_grad():
        model[3].weight[2, 5] = bad
    with pytest.raises(ValueError, match=rf"^{verb}: layer 3 \(Linear\) has 1 NaN/Inf value\(s\) in "
                                         r"its weight; fix or retrain the model"):
        if verb == "prune":
            prune(model, PruneConfig(sparsity=0.5))
        else:
            share(model, ShareConfig(bits=4))
    assert all(not parametrizations(m) for m in model.modules())


def test_meta_device_models_are_refused():
    with torch.device("meta"):
        model = mlp()
    for verb in (lambda m: prune(m, sparsity=0.5), lambda m: share(m)):
        with pytest.raises(ValueError, match=r"the model's tensors are on the meta device \(1.weight "
                                             r"has a shape but no values\): materialize them first"):
            verb(model)


class TiedLM(nn.Module):
    """GPT-2's tie: the output layer holds the embedding's Parameter."""

    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(32, 8)
        self.mid = nn.Linear(8, 8)
        self.lm_head = nn.Linear(8, 32, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, ids):
        return self.lm_head(torch.relu(self.mid(self.wte(ids))))


def test_tied_weights_are_pruned_once_with_one_mask():
    torch.manual_seed(0)
    model = TiedLM()
    prune(model, PruneConfig(sparsity=0.5))
    mask = get_mask(model.wte)
    assert mask is not None and get_mask(model.lm_head) is mask
    assert torch.equal(model.wte.weight, model.lm_head.weight)
    assert int((model.wte.weight == 0).sum()) == 0.5 * 32 * 8  # once, not pruned twice (75%)
    assert [c.name for c in last_report(model).touched] == ["wte", "mid"]
    assert "lm_head holds the same weight as wte: pruned once, with one mask" in last_report(model).notes
    # fine-tuning keeps the tie (one Parameter under both)
    ids = torch.randint(0, 32, (4, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten()).backward()
        opt.step()
    assert torch.equal(model.wte.weight, model.lm_head.weight)
    bake(model)
    assert model.wte.weight is model.lm_head.weight  # bake keeps the one tensor


def test_tied_weights_are_shared_once_and_stay_tied_through_fine_tuning():
    torch.manual_seed(0)
    model = TiedLM()
    share(model, ShareConfig(bits=3))
    [p] = [q for q in parametrizations(model.wte) if isinstance(q, SharedWeight)]
    assert [q for q in parametrizations(model.lm_head) if isinstance(q, SharedWeight)] == [p]
    ids = torch.randint(0, 32, (4, 5))
    before = model.wte.weight.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten()).backward()
        opt.step()
    assert not torch.equal(model.wte.weight, before)  # the centroids moved...
    assert torch.equal(model.wte.weight, model.lm_head.weight)  # ...and the tie held
    assert model.wte.weight.unique().numel() <= 8 + 1
