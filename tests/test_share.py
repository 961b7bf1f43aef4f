"""Weight sharing: exact 1-D k-means, the W = C[I] parametrization, centroid gradients."""

import numpy as np
import pytest
import torch
from torch import nn

from penjing.core.params import parametrizations
from penjing.core.report import last_report
from penjing.sharing import ShareConfig, SharedWeight, init_centroids, kmeans_1d, share, share_layer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lenet300_digits():
    """LeNet-300-100 trained briefly on the bundled digits (about 96% test accuracy)."""
    from penjing.data import digits
    from penjing.models import LeNet300
    from penjing.train import fit

    train, test = digits()
    torch.manual_seed(0)
    model = LeNet300()
    fit(model, train, epochs=10, lr=2e-3, progress=False)
    return model, train, test


def _inertia(x, c, labels):
    return float(((x - c[labels]) ** 2).sum())


def test_kmeans_matches_sklearn_from_the_same_start():
    from sklearn.cluster import KMeans

    x = torch.cat([torch.randn(3000) * 0.05, torch.randn(500) * 0.3 + 1.0]).double()
    c, labels = kmeans_1d(x, 8, init="linear")
    start = init_centroids(x.sort().values, 8, "linear").numpy().reshape(-1, 1)
    ref = KMeans(8, init=start, n_init=1, tol=0, max_iter=300).fit(x.numpy().reshape(-1, 1))
    ours = _inertia(x, c, labels)
    assert ours == pytest.approx(ref.inertia_, rel=1e-6)
    assert np.allclose(np.sort(ref.cluster_centers_.ravel()), c.numpy(), atol=1e-9)


def test_kmeans_assigns_every_value_to_its_nearest_centroid():
    x = torch.randn(10_000)
    for init in ("linear", "density", "random"):
        c, labels = kmeans_1d(x, 16, init=init, seed=1)
        nearest = (x[:, None] - c[None, :]).abs().argmin(1)
        # ties on a midpoint may go either way: compare distances, not indices
        assert torch.allclose((x - c[labels]).abs(), (x - c[nearest]).abs())
        assert torch.all(c[1:] >= c[:-1])


def test_kmeans_edge_cases_and_bad_input():
    c, labels = kmeans_1d(torch.tensor([0.5, 0.5, 0.5]), 4)
    assert torch.all(c[labels] == 0.5)
    c, labels = kmeans_1d(torch.zeros(0), 4)
    assert labels.numel() == 0
    with pytest.raises(ValueError, match="unknown centroid init 'kmeans\\+\\+'"):
        kmeans_1d(torch.randn(10), 2, init="kmeans++")
    with pytest.raises(ValueError, match="needs k >= 1"):
        kmeans_1d(torch.randn(10), 0)


def test_centroid_gradient_is_the_sum_of_member_gradients():
    """Hand-computed: weights [[0.1, 0.9], [0.12, 0]] with 2 centroids -> c0 = 0.11 (members
    (0,0), (1,0)), c1 = 0.9 (member (0,1)), the zero stays out. With loss = sum(W * G),
    dL/dc0 = G00 + G10 = 1 + 3 and dL/dc1 = G01 = 2."""
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, 0.9], [0.12, 0.0]]))
    p = share_layer(layer, bits=1)
    assert torch.allclose(p.centroids.detach(), torch.tensor([0.11, 0.9]))
    assert layer.weight[1, 1].item() == 0.0
    g = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    (layer.weight * g).sum().backward()
    assert p.centroids.grad.tolist() == [4.0, 2.0]


def test_share_keeps_zeros_and_has_at_most_2_to_the_b_values():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Conv2d(3, 4, 3))
    with torch.no_grad():
        model[0].weight[model[0].weight.abs() < 0.1] = 0
    zeros = model[0].weight == 0
    share(model)
    w = model[0].weight.detach()
    assert torch.all(w[zeros] == 0) and torch.all(w[~zeros] != 0)
    assert w[w != 0].unique().numel() <= 32
    assert model[2].weight.unique().numel() <= 256
    assert [p.bits for p in parametrizations(model[0])] == [5]
    assert [p.bits for p in parametrizations(model[2])] == [8]
    assert isinstance(parametrizations(model[0])[0], SharedWeight)
    assert parametrizations(model[0])[0].codec_hint() == {"codebook_bits": 5}


def test_zeros_stay_zero_through_fine_tuning():
    from penjing.train import fit

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    with torch.no_grad():
        model[1].weight[:, ::2] = 0
    share(model, ShareConfig(bits=3))
    before = model[1].weight.detach().clone()
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,)))
    fit(model, data, epochs=2, lr=1e-2, progress=False)
    after = model[1].weight.detach()
    assert torch.all(after[:, ::2] == 0)
    assert not torch.equal(before, after)  # the centroids did move
    assert after[after != 0].unique().numel() <= 8


def _bits(model):
    return {n: [p.bits for p in parametrizations(m)] for n, m in model.named_children()
            if parametrizations(m)}


def test_share_config_validation_and_lookup():
    with pytest.raises(ValueError, match="^ShareConfig.bits must be integers in \\[1, 16\\], got 0$"):
        ShareConfig(bits=0)
    with pytest.raises(ValueError, match="^ShareConfig.bias_bits must be integers in \\[1, 16\\], got 17$"):
        ShareConfig(bias_bits=17)
    with pytest.raises(ValueError, match="^ShareConfig.init must be one of linear, density, random"):
        ShareConfig(init="kmeans++")
    def fresh():
        model = nn.Sequential()
        model.add_module("fc1", nn.Linear(4, 4))
        model.add_module("fc3", nn.Linear(4, 4))
        model.add_module("conv", nn.Conv1d(1, 1, 1))
        return model

    model = fresh()
    share(model, ShareConfig(bits={"fc3": 2, "Linear": 4, "conv": 7}))  # first match wins
    assert _bits(model) == {"fc1": [4], "fc3": [2], "conv": [7]}
    layer = nn.Linear(3, 3)
    share_layer(layer, 2)
    with pytest.raises(ValueError, match="already shared"):
        share_layer(layer, 2)
    with pytest.raises(ValueError, match="^share: layer \\(root\\) \\(Linear\\) was selected but its "
                                         "weight is already shared"):
        share(layer, ShareConfig(layers="Linear"))
    with pytest.raises(ValueError, match="^share: the model has no layer with a weight matrix"):
        share(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="^ShareConfig.bits: key 'fc9' matches no layer; the layers "
                                         "are fc1, fc3, conv$"):
        share(fresh(), ShareConfig(bits={"fc9": 3, "*": 4}))


def test_default_bits_are_the_papers_and_unmatched_layers_are_reported():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(1, 2, 3))
    model.add_module("lin", nn.Linear(4, 4))
    model.add_module("emb", nn.Embedding(10, 4))
    share(model)
    assert _bits(model) == {"conv": [8], "lin": [5], "emb": [5]}
    model = nn.Sequential()
    model.add_module("lin", nn.Linear(4, 4))
    model.add_module("conv", nn.Conv2d(1, 2, 3))
    share(model, ShareConfig(bits={"fc": 4}))  # the role "fc": any Linear, whatever its name
    assert _bits(model) == {"lin": [4]}
    [skip] = last_report(model).skipped
    assert (skip.name, skip.reason) == ("conv", "no key of ShareConfig.bits matches it")
    assert [c.after for c in last_report(model).touched] == ["4-bit codebook"]


def test_sharing_a_trained_lenet300_keeps_accuracy(lenet300_digits):
    """Real data: 5-bit sharing of every layer of a trained LeNet-300-100 (no pruning) costs
    at most one point of test accuracy before any fine-tuning."""
    from penjing.train import evaluate

    model, train, test = lenet300_digits
    dense = evaluate(model, test)
    share(model, ShareConfig(bits=5))
    assert evaluate(model, test) >= dense - 0.01


def test_bits_by_type_name_and_role_on_an_already_parametrized_layer():
    """A pruned layer's class is torch's ``ParametrizedLinear``: the type and role lookups still
    work (the layer is named "lin", so only the type or the role can match it)."""
    from torch.nn.utils import parametrize

    class Keep(nn.Module):
        def forward(self, w):
            return w

    for key, bits in (("Linear", 3), ("fc", 4)):
        model = nn.Sequential()
        model.add_module("lin", nn.Linear(4, 4))
        parametrize.register_parametrization(model.lin, "weight", Keep())
        share(model, ShareConfig(bits={key: bits}))
        assert [p.bits for p in parametrizations(model.lin) if isinstance(p, SharedWeight)] == [bits]


def test_kmeans_uses_every_centroid_across_the_pruning_gap():
    """Linear init over a pruned layer puts centroids in the empty gap around zero; they are
    relocated onto the data, so all 2^b codebook entries end up used."""
    w = torch.randn(50_000, generator=torch.Generator().manual_seed(0)) * 0.05
    w = w[w.abs() > 0.04]
    c, labels = kmeans_1d(w, 32, init="linear")
    assert labels.unique().numel() == 32
    assert torch.all(c.abs() > 0.04)
