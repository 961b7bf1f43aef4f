"""Properties of the masks over random shapes and values (hypothesis)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from penjing.pruning import PruneConfig, prune


@settings(max_examples=25, deadline=None)
@given(out=st.integers(1, 12), groups=st.integers(1, 6), nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (4, 8)]),
       conv=st.booleans(), seed=st.integers(0, 2**16))
def test_n_m_pattern_holds_for_any_shape(out, groups, nm, conv, seed):
    n, m = nm
    torch.manual_seed(seed)
    layer = nn.Conv2d(groups * m, out, 2) if conv else nn.Linear(groups * m, out)
    prune(layer, PruneConfig(granularity=f"{n}:{m}"))
    w = layer.weight.detach()
    w = w.movedim(1, -1) if conv else w
    assert torch.all((w == 0).reshape(-1, m).sum(-1) == m - n)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 20), cols=st.integers(1, 20), sparsity=st.floats(0, 0.99),
       seed=st.integers(0, 2**16))
def test_per_layer_sparsity_removes_exactly_the_smallest(rows, cols, sparsity, seed):
    torch.manual_seed(seed)
    layer = nn.Linear(cols, rows)
    dense = layer.weight.detach().clone()
    if round(sparsity * rows * cols) >= rows * cols:  # every weight: refused (a layer keeps one)
        with pytest.raises(ValueError, match=r"would remove every weight of layer \(root\)"):
            prune(layer, PruneConfig(sparsity=sparsity))
        return
    prune(layer, PruneConfig(sparsity=sparsity))
    pruned = layer.weight.detach() == 0
    assert int(pruned.sum()) == round(sparsity * rows * cols)
    if pruned.any() and (~pruned).any():
        assert dense[~pruned].abs().min() >= dense[pruned].abs().max()
