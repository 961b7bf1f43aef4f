"""Structured (filter/channel) pruning: layers and their coupled neighbours physically shrink,
the model still runs, and its state_dict loads into the smaller architecture."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import penjing as pj
from penjing.models import LeNet5, SmallResNet
from penjing.pruning import PruneConfig, prune, resize_like

X = torch.rand(3, 1, 8, 8)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_loads(pruned: nn.Module, fresh: nn.Module) -> None:
    """The pruned state_dict loads into a copy and into a freshly built, resized model, and
    all three compute the same thing."""
    pruned.eval()
    state = pruned.state_dict()
    clone = copy.deepcopy(pruned)
    clone.load_state_dict(state)
    resized = resize_like(fresh, state)
    resized.load_state_dict(state)
    resized.eval()
    assert torch.allclose(resized(X), pruned(X), atol=1e-6)
    assert n_params(resized) == n_params(pruned)


def test_small_resnet_half_the_filters():
    torch.manual_seed(0)
    model = SmallResNet().eval()
    dense = n_params(model)
    prune(model, PruneConfig(sparsity=0.5, granularity="filter", layers="Conv2d"), example_inputs=X[:1])
    # every conv kept half its filters; BatchNorms, the 1x1 shortcuts and the classifier's inputs
    # shrank with them (residual adds tie both sides to the same channels)
    assert model.stem[0].out_channels == 8 and model.stem[1].num_features == 8
    block = model.layers[1]
    assert block.conv2.out_channels == block.shortcut[0].out_channels == block.bn2.num_features == 16
    assert model.fc.in_features == 32 and model.fc.out_features == 10
    assert n_params(model) < 0.3 * dense
    assert model(X).shape == (3, 10)
    check_loads(model, SmallResNet())


def test_lenet5_half_the_filters_keeps_the_classifier():
    torch.manual_seed(0)
    model = LeNet5().eval()
    prune(model, PruneConfig(sparsity=0.5, granularity="channel", criterion="l2"), example_inputs=X[:1])
    assert (model.conv1.out_channels, model.conv2.out_channels, model.fc1.out_features) == (10, 25, 250)
    assert model.fc1.in_features == 25 * 2 * 2 and model.fc2.out_features == 10
    check_loads(model, LeNet5())


def test_removes_the_filters_with_the_smallest_l1_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10))
    with torch.no_grad():
        for i, scale in enumerate([1.0, 0.01, 2.0, 0.02]):
            model[0].weight[i].fill_(scale)
    kept = model[0].weight[[0, 2]].clone()
    prune(model, PruneConfig(sparsity=0.5, granularity="filter"), example_inputs=X[:1])
    assert torch.equal(model[0].weight, kept)


def test_user_sequential_with_conv_batchnorm_linear():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(16 * 36, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    fresh = copy.deepcopy(model)
    prune(model, PruneConfig(sparsity=0.5, granularity="channel"), example_inputs=X[:1])
    assert [model[i].weight.shape[0] for i in (0, 1, 3, 6, 8)] == [4, 4, 8, 16, 10]
    assert model[6].in_features == 8 * 36
    check_loads(model, fresh)


class Residual(nn.Module):
    """A user block with a branch: y = relu(bn(conv2(relu(conv1(x)))) + x), then a head."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Conv2d(1, 12, 3, padding=1)
        self.conv1 = nn.Conv2d(12, 12, 3, padding=1)
        self.conv2 = nn.Conv2d(12, 12, 3, padding=1)
        self.bn = nn.BatchNorm2d(12)
        self.head = nn.Linear(12, 10)

    def forward(self, x):
        x = torch.relu(self.inp(x))
        y = self.bn(self.conv2(torch.relu(self.conv1(x))))
        return self.head(torch.relu(x + y).mean((2, 3)))


def test_user_residual_block_prunes_both_sides_of_the_add():
    torch.manual_seed(0)
    model = Residual().eval()
    fresh = copy.deepcopy(model)
    prune(model, PruneConfig(sparsity=0.5, granularity="filter"), example_inputs=X[:1])
    # conv2's filters and inp's filters meet at the add: they must shrink together
    assert model.inp.out_channels == model.conv2.out_channels == model.bn.num_features == 6
    assert model.conv1.out_channels == 6 and model.head.in_features == 6
    check_loads(model, fresh)


def test_iterative_structured_fine_tunes_between_rounds(digits_data):
    train, test = digits_data
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10))
    sizes = []

    def log(m, r):
        r.accuracy = pj.evaluate(m, test)
        sizes.append((r.params, r.accuracy))

    prune(model, PruneConfig(sparsity=0.5, granularity="channel", schedule="iterative", rounds=2,
                             finetune_epochs=1, on_round=log),
          data=torch.utils.data.Subset(train, range(256)), progress=False)
    assert [p for p, _ in sizes] == [6 * 9, 4 * 9]  # 8 -> 6 -> 4 filters (tp's linear steps)
    assert all(a is not None for _, a in sizes)


def test_structured_pruning_refuses_a_masked_model():
    model = LeNet5()
    prune(model, PruneConfig(sparsity=0.5))
    with pytest.raises(ValueError, match=r"^prune: structured pruning rebuilds layers, but this model has "
                       r"parametrizations \(masks, quantizers\.\.\.\) attached: bake them first"):
        prune(model, PruneConfig(sparsity=0.5, granularity="channel"), example_inputs=X[:1])


def test_tracing_leaves_batchnorm_statistics_and_mode_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    model.train()
    prune(model, PruneConfig(sparsity=0.5, granularity="channel"), example_inputs=X[:1])  # a batch of one
    assert model.training and model[2].num_features == 8
    assert torch.all(model[2].running_mean == 0) and int(model[2].num_batches_tracked) == 0


class UserNet(nn.Module):
    """The user model of issue 15: depthwise conv + residual + attention + LayerNorm + Embedding."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pw = nn.Conv2d(32, 32, 1)
        self.norm = nn.LayerNorm(32)
        self.pos = nn.Embedding(16, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.pw(torch.relu(self.dw(x)))
        t = x.flatten(2).transpose(1, 2)
        t = t + self.pos(torch.arange(t.shape[1], device=t.device))
        h = self.norm(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        t = t + self.mlp(self.norm(t))
        return self.head(t.mean(1))


IMG = torch.rand(2, 3, 4, 4)


def _rebuilt(pruned: nn.Module) -> nn.Module:
    from penjing.core.attention import split_attention

    fresh = UserNet()
    split_attention(fresh)  # the pruned model's attention is split: so is the architecture
    state = pruned.state_dict()
    resized = resize_like(fresh, state)
    resized.load_state_dict(state)
    return resized.eval()


@pytest.mark.parametrize("layers", [None, "Conv2d"])
def test_user_model_with_depthwise_attention_layernorm_embedding(layers):
    from penjing.core.report import last_report

    torch.manual_seed(0)
    model = UserNet().eval()
    dense = n_params(model)
    prune(model, PruneConfig(sparsity=0.5, granularity="channel", layers=layers), example_inputs=IMG)
    # the model width (stem, depthwise, pointwise, norm, embedding, attention in/out) halves
    assert (model.stem.out_channels, model.dw.out_channels, model.dw.groups) == (16, 16, 16)
    assert model.norm.normalized_shape == (16,) and model.pos.embedding_dim == 16
    assert model.attn.q_proj.weight.shape == (32, 16)  # heads kept whole, inputs shrank
    assert model.attn.out_proj.weight.shape == (16, 32) and model.head.in_features == 16
    assert model.mlp[0].out_features == (32 if layers is None else 64)  # unselected: not a root
    assert n_params(model) < dense
    assert model(IMG).shape == (2, 10)
    assert torch.allclose(_rebuilt(model)(IMG), model(IMG), atol=1e-6)
    report = last_report(model)
    assert "split 1 MultiheadAttention into q/k/v/out Linear" in report.notes
    assert {c.name for c in report.touched} >= {"stem", "dw", "pw", "norm", "pos", "head"}


class FixedWidth(nn.Module):
    """Its forward reshapes to a stored width, as torchvision's ViT does with hidden_dim."""

    def __init__(self):
        super().__init__()
        self.width = 8
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = self.a(x)
        n, _, h, w = y.shape
        z = self.b(y.reshape(n, self.width, h * w).view(n, self.width, h, w))
        return self.head(z.mean((2, 3)))


def test_a_layer_whose_width_the_code_fixes_is_kept_and_reported():
    from penjing.core.report import last_report

    torch.manual_seed(0)
    model = FixedWidth().eval()
    prune(model, PruneConfig(sparsity=0.5, granularity="channel"), example_inputs=X[:1])
    assert model.a.out_channels == 8 and model.b.out_channels == 4  # b's group is free
    skipped = {s.name: s.reason for s in last_report(model).skipped}
    assert skipped["a"].startswith("kept whole: pruning the channels it emits breaks the model's forward")
    assert model(X).shape == (3, 4)


def test_resize_like_keeps_each_modules_configuration():
    """Copies, resized: an activation held by a norm layer (timm's BatchNormAct2d), eps and
    momentum survive; constructing from defaults would drop them."""

    class BNAct(nn.BatchNorm2d):
        def __init__(self, n):
            super().__init__(n, eps=1e-3, momentum=0.3)
            self.act = nn.Hardswish()

        def forward(self, x):
            return self.act(super().forward(x))

    model = nn.Sequential(nn.Conv2d(1, 8, 3), BNAct(8), nn.Conv2d(8, 4, 1), nn.LayerNorm([4, 6, 6]))
    state = {k: v for k, v in model.state_dict().items()}
    state["0.weight"], state["0.bias"] = state["0.weight"][:5], state["0.bias"][:5]
    for k in ("weight", "bias", "running_mean", "running_var"):
        state[f"1.{k}"] = state[f"1.{k}"][:5]
    state["2.weight"] = state["2.weight"][:, :5]
    resized = resize_like(model, state)
    resized.load_state_dict(state)
    bn = resized[1]
    assert isinstance(bn, BNAct) and isinstance(bn.act, nn.Hardswish)
    assert (bn.num_features, bn.eps, bn.momentum) == (5, 1e-3, 0.3)
    assert resized[0].out_channels == 5 and resized[2].in_channels == 5
    assert resized(X[:1]).shape == (1, 4, 6, 6)
