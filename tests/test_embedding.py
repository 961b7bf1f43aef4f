"""Embedding and EmbeddingBag are weighted layers: pruned (unstructured, N:M along the
embedding dimension), shared (codebook), padding row kept, and stored by the codec."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from penjing.codec import load, save
from penjing.core.params import bake
from penjing.core.report import last_report
from penjing.pruning import PruneConfig, get_mask, prune
from penjing.sharing import ShareConfig, SharedWeight, share


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(40, 16, padding_idx=0)
        self.bag = nn.EmbeddingBag(30, 8, mode="mean")
        self.head = nn.Linear(24, 5)

    def forward(self, ids):
        return self.head(torch.cat([self.emb(ids).mean(1), self.bag(ids % 30)], 1))


IDS = torch.tensor([[0, 3, 5, 7], [1, 0, 0, 39]])


def test_unstructured_pruning_reaches_embeddings_and_keeps_the_padding_row():
    torch.manual_seed(0)
    model = Tagger()
    prune(model, PruneConfig(sparsity=0.75))
    emb, bag = model.emb.weight.detach(), model.bag.weight.detach()
    assert get_mask(model.emb) is not None and get_mask(model.bag) is not None
    assert torch.all(get_mask(model.emb).mask[0])  # the padding row is never masked
    # 75% of the 39 trainable rows' weights; the padding row (zeros at init) on top
    assert int((emb[1:] == 0).sum()) == round(0.75 * 39 * 16)
    assert int((bag == 0).sum()) == round(0.75 * 30 * 8)
    assert {c.name for c in last_report(model).touched} == {"emb", "bag", "head"}


def test_a_nonzero_padding_row_survives_pruning():
    torch.manual_seed(0)
    layer = nn.Embedding(10, 8, padding_idx=3)
    with torch.no_grad():
        layer.weight[3] = 1e-4  # tiny: the first to go, were it prunable
    prune(layer, PruneConfig(sparsity=0.5))
    assert torch.all(layer.weight[3] == 1e-4)
    assert int((layer.weight == 0).sum()) == round(0.5 * 9 * 8)


def test_n_m_runs_along_the_embedding_dimension():
    torch.manual_seed(0)
    model = Tagger()
    prune(model, PruneConfig(granularity="2:4"))
    w = model.emb.weight.detach()
    assert torch.all((w[1:] == 0).reshape(39, -1, 4).sum(-1) == 2)
    assert torch.all((model.bag.weight == 0).reshape(30, -1, 4).sum(-1) == 2)


def test_sharing_an_embedding_keeps_zeros_and_the_padding_row():
    torch.manual_seed(0)
    model = Tagger()
    share(model, ShareConfig(bits={"embedding": 3, "*": 5}))
    shared = [p for p in model.emb.parametrizations.weight if isinstance(p, SharedWeight)]
    assert len(shared) == 1 and shared[0].bits == 3
    assert torch.all(model.emb.weight[0] == 0) and torch.all(shared[0].index[0] == 0)
    assert model.emb.weight[1:].unique().numel() <= 8
    out = model(IDS)
    out.square().sum().backward()  # the padding row gets no gradient, so index 0 (zero) is right
    assert torch.all(model.emb.weight[0] == 0)
    layer = nn.Embedding(5, 4, padding_idx=1)
    with torch.no_grad():
        layer.weight[1] = 0.5
    with pytest.raises(ValueError, match=r"^share: embedding \(root\)'s padding row \(padding_idx=1\) "
                                         r"is not zero"):
        share(layer, ShareConfig(bits=2))


def test_pruned_and_shared_embedding_model_round_trips_through_the_codec(tmp_path):
    torch.manual_seed(0)
    model = Tagger()
    prune(model, PruneConfig(sparsity=0.8))
    share(model, ShareConfig(bits={"embedding": 4, "*": 5}))
    expected = {k: v.detach().clone() for k, v in bake(model).state_dict().items()}
    save(model, tmp_path / "tagger.pjz")
    state = load(tmp_path / "tagger.pjz")
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key
    fresh = Tagger()
    fresh.load_state_dict(state)
    assert torch.equal(fresh(IDS), model(IDS))
