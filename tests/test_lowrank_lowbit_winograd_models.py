"""pj.lowrank, pj.ternarize and pj.winograd on the models people bring: a user model with
depthwise conv + residual + MultiheadAttention + LayerNorm + Embedding (default venv), and
torchvision resnet18 / a Hugging Face BertModel from a small config (the venv that has them;
skipped elsewhere). Each asserts a real property, not only that it ran."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import penjing as pj
from penjing.core.attention import split_attention
from penjing.core.layers import weight_layout
from penjing.core.report import last_report
from penjing.low_rank import LowRankEmbedding
from penjing.winograd_conv import WinogradConv2d

torch.set_num_threads(1)


class UserNet(nn.Module):
    """Token ids -> embedding -> a 3x3 conv over an 8x8 grid of tokens -> depthwise conv with a
    residual -> LayerNorm -> self-attention with a residual -> mean -> classifier."""

    def __init__(self, vocab: int = 200, dim: int = 16, classes: int = 5):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.depthwise = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Linear(dim, 4 * dim)
        self.head = nn.Linear(4 * dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, t = ids.shape
        h = self.embed(ids).transpose(1, 2).reshape(b, -1, 8, t // 8)
        h = torch.relu(self.conv(h))
        h = h + self.depthwise(h)  # residual
        tokens = self.norm(h.flatten(2).transpose(1, 2))
        tokens = tokens + self.attn(tokens, tokens, tokens, need_weights=False)[0]
        return self.head(torch.relu(self.mlp(tokens.mean(1))))


def user_net() -> tuple[UserNet, torch.Tensor]:
    torch.manual_seed(0)
    return UserNet().eval(), torch.randint(0, 200, (4, 64))


def _skips(model: nn.Module) -> dict[str, str]:
    return {s.name: s.reason for s in last_report(model).skipped}


def _assert_planned_drop(model: nn.Module, before: int, fraction: float) -> None:
    plan = last_report(model).extra["plan"]
    assert plan.budget_after <= fraction * plan.budget_before
    after = sum(p.numel() for p in model.parameters())
    assert before - after == plan.budget_before - plan.budget_after  # exactly the planned drop
    assert plan.params_after == after


def _assert_three_values_per_channel(model: nn.Module) -> int:
    """Every ternary layer: exactly three values {-Wn, 0, +Wp} in the layer, every output
    channel (the layout's out axis) within them, and all three in every channel of 64 weights
    or more (a 3x3 depthwise channel of 9 may lack a zero). Returns the layers checked."""
    checked = 0
    for name, module in model.named_modules():
        ps = getattr(module, "parametrizations", None)
        if ps is None or "weight" not in ps:
            continue
        w = module.weight.detach()
        values = w.unique()
        assert values.numel() == 3 and values[0] < 0 and values[1] == 0 and values[2] > 0, (name, values)
        for channel in w.movedim(weight_layout(module).out_axis, 0):
            seen = channel.unique()
            assert torch.isin(seen, values).all(), name
            assert channel.numel() < 64 or torch.equal(seen, values), name
        checked += 1
    return checked


# --- the user model (default venv) -----------------------------------------------------------

def test_lowrank_on_a_user_model_factorises_what_it_can_and_says_why_not_the_rest():
    model, ids = user_net()
    before = sum(p.numel() for p in model.parameters())
    pj.lowrank(model, pj.LowRankConfig(params=0.5), example_inputs=ids)
    _assert_planned_drop(model, before, 0.5)
    skips = _skips(model)
    assert skips["depthwise"] == "depthwise conv (groups=16): a split would mix the groups"
    # attention was split into q/k/v/out Linear first, so its projections are candidates too
    assert "split 1 MultiheadAttention into q/k/v/out Linear" in last_report(model).notes
    assert "attn" not in skips and skips["attn.q_proj"] == "kept dense by the budget"
    touched = {c.name for c in last_report(model).touched}
    assert "embed" in touched and isinstance(model.embed, LowRankEmbedding)
    # the budget counts only what lowrank can act on: embedding, conv, q/k/v/out, mlp, head
    plan = last_report(model).extra["plan"]
    assert plan.budget_before == 200 * 16 + 16 * 16 * 9 + 4 * 16 * 16 + 16 * 64 + 64 * 5
    assert model(ids).shape == (4, 5)
    # the same structure rebuilt from the ranks loads the state_dict strictly
    rebuilt, _ = user_net()
    pj.lowrank(rebuilt, pj.LowRankConfig(rank=plan.ranks))
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt(ids), model(ids))


def test_the_budget_ignores_what_lowrank_cannot_touch():
    """Issue 15: the budget counted embeddings (then unsupported) and attention and failed. Here
    the embedding is excluded and MHA / depthwise are skipped: 30% of the rest is reachable."""
    model, ids = user_net()
    before = sum(p.numel() for p in model.parameters())
    pj.lowrank(model, pj.LowRankConfig(params=0.3, exclude="Embedding"), example_inputs=ids)
    plan = last_report(model).extra["plan"]
    assert plan.budget_before == 16 * 16 * 9 + 4 * 16 * 16 + 16 * 64 + 64 * 5  # conv, q/k/v/out, mlp, head
    _assert_planned_drop(model, before, 0.3)
    assert type(model.embed) is nn.Embedding and "embed" not in _skips(model)  # excluded, not skipped


def test_factorised_embedding_looks_up_rows_of_a_times_b():
    torch.manual_seed(0)
    table = nn.Embedding(50, 12, padding_idx=0)
    with torch.no_grad():
        table.weight[0].zero_()
    low = LowRankEmbedding.from_module(table, 12)  # full rank: the same table
    ids = torch.tensor([[0, 3, 49], [7, 7, 1]])
    torch.testing.assert_close(low(ids), table(ids), rtol=1e-5, atol=1e-6)
    assert torch.equal(low(torch.tensor([0])), torch.zeros(1, 12))  # padding row stays zero
    low4 = LowRankEmbedding.from_module(table, 4)
    torch.testing.assert_close(low4(ids), low4.dense_weight()[ids], rtol=1e-6, atol=1e-6)
    s = torch.linalg.svdvals(table.weight.detach().double())
    error = (low4.dense_weight().detach().double() - table.weight.detach().double()).norm()
    assert float(error) == pytest.approx(float(s[4:].norm()), rel=1e-6)  # Eckart-Young


def test_flops_budget_skips_embeddings_with_the_reason():
    model, ids = user_net()
    pj.lowrank(model, pj.LowRankConfig(flops=0.7), example_inputs=ids)
    assert _skips(model)["embed"].startswith("an embedding lookup has no multiply-accumulates")
    plan = last_report(model).extra["plan"]
    assert plan.budget_metric == "flops" and plan.budget_after <= 0.7 * plan.budget_before


def test_ternarize_on_a_user_model_and_its_file(tmp_path):
    model, ids = user_net()
    pj.ternarize(model, pj.TernaryConfig(algorithm="twn", keep_first_last=False))
    touched = {c.name for c in last_report(model).touched}
    assert touched == {"embed", "conv", "depthwise", "attn.q_proj", "attn.k_proj", "attn.v_proj",
                       "attn.out_proj", "mlp", "head"}
    assert _skips(model) == {}
    assert _assert_three_values_per_channel(model) == 9
    out = model(ids)  # MultiheadAttention runs on its parametrized out_proj
    info = pj.save(model, tmp_path / "user.pjz")
    fresh, _ = user_net()
    split_attention(fresh)  # the file holds the split attention's q/k/v/out weights
    fresh.load_state_dict(pj.load(tmp_path / "user.pjz"))
    assert torch.equal(fresh(ids), out)
    for name in ("embed", "conv", "mlp"):  # a 3-value codebook: at most 2 bits per weight
        t = info[f"{name}.weight"]
        assert "codebook" in t.codec and t.payload <= math.prod(t.shape) * 2 / 8 + 64, name


def test_winograd_on_a_user_model_converts_the_plain_conv_only():
    model, ids = user_net()
    ref = copy.deepcopy(model)
    pj.winograd(model, pj.WinogradConfig(measure=False), example_inputs=ids)
    assert isinstance(model.conv, WinogradConv2d) and type(model.depthwise) is nn.Conv2d
    assert _skips(model)["depthwise"].startswith("Winograd needs groups=1, got groups=16")
    assert [c.name for c in last_report(model).touched] == ["conv"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref(ids), rtol=1e-4, atol=1e-5)


# --- torchvision resnet18 and a Hugging Face BERT (the venv that has them) -------------------

def _resnet18():
    models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    return models.resnet18(weights=None, num_classes=10).eval(), torch.randn(1, 3, 64, 64)


def _bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=64)
    model = transformers.BertModel(config).eval()
    batch = {"input_ids": torch.randint(0, 500, (2, 16)), "attention_mask": torch.ones(2, 16, dtype=torch.long)}
    return model, batch


def test_winograd_resnet18_equals_the_direct_convs():
    model, x = _resnet18()
    ref = copy.deepcopy(model)
    pj.winograd(model, pj.WinogradConfig(measure=False), example_inputs=x)
    # layer1: 4 stride-1 3x3 convs; layers 2-4: 3 each (their first conv has stride 2)
    assert len(last_report(model).touched) == 13
    assert _skips(model)["conv1"] == "Winograd needs stride 1, got stride=(2, 2)"
    assert _skips(model)["layer2.0.downsample.0"] == "Winograd needs stride 1, got stride=(2, 2)"
    with torch.no_grad():
        expected, got = ref(x), model(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_lowrank_resnet18_drops_params_by_the_planned_amount():
    model, x = _resnet18()  # the first two stages and the head: seconds, not the 20 s of all
    before = sum(p.numel() for p in model.parameters())
    pj.lowrank(model, pj.LowRankConfig(params=0.5, layers=["layer1.*", "layer2.*", "fc"]),
               example_inputs=x)
    _assert_planned_drop(model, before, 0.5)
    assert model(x).shape == (1, 10)


@pytest.mark.slow
def test_lowrank_all_of_resnet18_drops_params_by_the_planned_amount():
    model, x = _resnet18()
    before = sum(p.numel() for p in model.parameters())
    pj.lowrank(model, pj.LowRankConfig(params=0.5), example_inputs=x)
    _assert_planned_drop(model, before, 0.5)
    assert model(x).shape == (1, 10)


def test_ternarize_resnet18_three_values_per_channel():
    model, x = _resnet18()
    pj.ternarize(model, pj.TernaryConfig(algorithm="twn"))
    assert set(_skips(model)) == {"conv1", "fc"}  # first and last stay full precision
    assert _assert_three_values_per_channel(model) == len(last_report(model).touched) == 19
    assert torch.isfinite(model(x)).all()


def test_bert_lowrank_counts_the_embeddings_it_factorises():
    model, batch = _bert()
    before = sum(p.numel() for p in model.parameters())
    pj.lowrank(model, pj.LowRankConfig(params=0.5), example_inputs=batch)
    _assert_planned_drop(model, before, 0.5)
    touched = {c.name for c in last_report(model).touched}
    assert "embeddings.word_embeddings" in touched
    out = model(**batch).last_hidden_state
    assert out.shape == (2, 16, 32) and torch.isfinite(out).all()


def test_bert_ternarize_and_winograd():
    model, batch = _bert()
    pj.ternarize(model, pj.TernaryConfig(algorithm="twn"))
    assert set(_skips(model)) == {"embeddings.word_embeddings", "pooler.dense"}
    assert _assert_three_values_per_channel(model) == len(last_report(model).touched)
    assert torch.isfinite(model(**batch).last_hidden_state).all()
    model, batch = _bert()
    with pytest.warns(UserWarning, match="penjing.winograd: no layer was changed"):
        pj.winograd(model, example_inputs=batch)
    assert last_report(model).touched == [] and all(
        s.reason.endswith("is not an nn.Conv2d (Winograd computes 2-D convolutions)")
        for s in last_report(model).skipped)
