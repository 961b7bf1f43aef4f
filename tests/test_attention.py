"""SplitMultiheadAttention computes what nn.MultiheadAttention computes, for every option, and
its state maps to and from torch's packed layout."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from penjing.core.attention import (
    SplitMultiheadAttention,
    packed_state,
    split_attention,
    split_state,
)

E, H, L, S, N = 8, 2, 3, 4, 2


def _masks(kind_kpm: str, kind_attn: str, batched: bool, gen: torch.Generator, S: int = S):
    bsz = N if batched else 1
    kpm = attn = None
    allowed = torch.rand(bsz, S, generator=gen) > 0.5
    allowed[:, 0] = True  # no row masked everywhere (that is NaN in torch too)
    if kind_kpm == "bool":
        kpm = ~allowed
    elif kind_kpm == "float":
        kpm = torch.randn(bsz, S, generator=gen)
    if kind_kpm != "none" and not batched:
        kpm = kpm[0]
    if kind_attn == "bool2d":
        attn = torch.rand(L, S, generator=gen) > 0.6
        attn[:, 0] = False
    elif kind_attn == "float3d":
        attn = torch.randn(bsz * H, L, S, generator=gen)
    return kpm, attn


def _inputs(batch_first: bool, batched: bool, kdim: int, vdim: int, gen: torch.Generator):
    def make(length, dim):
        if not batched:
            return torch.randn(length, dim, generator=gen)
        shape = (N, length, dim) if batch_first else (length, N, dim)
        return torch.randn(*shape, generator=gen)
    return make(L, E), make(S, kdim), make(S, vdim)


def _pair(**options):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, **options)
    with torch.no_grad():  # non-zero biases, so that a dropped bias shows
        for name, p in ref.named_parameters():
            if "bias" in name:
                p.normal_()
    return ref, SplitMultiheadAttention.from_torch(ref)


def _close(a, b):
    if a is None or b is None:
        assert a is None and b is None
        return
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=2e-6, rtol=1e-5), (a - b).abs().max()


def test_equal_to_torch_for_every_combination():
    gen = torch.Generator().manual_seed(1)
    checked = 0
    for batch_first, bias, dims, bias_kv, zero_attn in itertools.product(
            (False, True), (True, False), ((E, E), (5, 6)), (False, True), (False, True)):
        kdim, vdim = dims
        ref, split = _pair(batch_first=batch_first, bias=bias, kdim=kdim, vdim=vdim,
                           add_bias_kv=bias_kv, add_zero_attn=zero_attn)
        for batched, kpm_kind, attn_kind, weights in itertools.product(
                (True, False), ("none", "bool", "float"), ("none", "bool2d", "float3d"),
                ("avg", "heads", "none")):
            if kpm_kind != "none" and attn_kind.startswith("bool") != (kpm_kind == "bool"):
                continue  # torch refuses mixing a bool and a float mask (deprecated)
            q, k, v = _inputs(batch_first, batched, kdim, vdim, gen)
            if (kdim, vdim) == (E, E) and batched and kpm_kind == "none":
                k = v = q  # self-attention: torch's packed projection (and fast path in eval)
            kpm, attn = _masks(kpm_kind, attn_kind, batched, gen, S=k.shape[-2 if batch_first or not batched else 0])
            kwargs = dict(key_padding_mask=kpm, attn_mask=attn, need_weights=weights != "none",
                          average_attn_weights=weights == "avg")
            for train in (False, True):  # train mode: the slow path in torch too
                ref.train(train)
                split.train(train)
                out_ref, w_ref = ref(q, k, v, **kwargs)
                out, w = split(q, k, v, **kwargs)
                _close(out, out_ref)
                _close(w, w_ref)
                checked += 1
    assert checked > 1000


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("with_kpm", [False, True])
def test_is_causal_hint_as_torch(need_weights, with_kpm):
    ref, split = _pair(batch_first=True)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(N, L, E, generator=gen)
    causal = nn.Transformer.generate_square_subsequent_mask(L)
    kpm = torch.tensor([[False, False, True], [False, True, False]]) if with_kpm else None
    if with_kpm:
        causal = causal.isinf()  # masks of one kind
    for mask in (causal, torch.zeros(L, L, dtype=causal.dtype)):  # a wrong hint: torch's behaviour
        out_ref, w_ref = ref(x, x, x, attn_mask=mask, is_causal=True, need_weights=need_weights,
                             key_padding_mask=kpm)
        out, w = split(x, x, x, attn_mask=mask, is_causal=True, need_weights=need_weights,
                       key_padding_mask=kpm)
        _close(out, out_ref)
        _close(w, w_ref)
    with pytest.raises(RuntimeError, match="Need attn_mask if specifying the is_causal hint"):
        split(x, x, x, is_causal=True)


def test_dropout_in_training_draws_as_torch():
    for need_weights in (True, False):
        ref, split = _pair(dropout=0.3, batch_first=True)
        ref.train(), split.train()
        x = torch.randn(N, L, E)
        torch.manual_seed(5)
        out_ref, _ = ref(x, x, x, need_weights=need_weights)
        torch.manual_seed(5)
        out, _ = split(x, x, x, need_weights=need_weights)
        _close(out, out_ref)
        torch.manual_seed(6)
        assert not torch.allclose(split(x, x, x, need_weights=need_weights)[0], out)


def test_gradients_flow_through_the_linears():
    ref, split = _pair()
    x = torch.randn(L, N, E)
    ref(x, x, x)[0].square().sum().backward()
    split(x, x, x)[0].square().sum().backward()
    g = split_state({"in_proj_weight": ref.in_proj_weight.grad})
    for n in "qkv":
        assert torch.allclose(getattr(split, f"{n}_proj").weight.grad, g[f"{n}_proj.weight"], atol=1e-5)
    assert torch.allclose(split.out_proj.weight.grad, ref.out_proj.weight.grad, atol=1e-5)


@pytest.mark.parametrize("dims", [(E, E), (5, 6)])
def test_state_dict_maps_both_ways(dims):
    ref, split = _pair(kdim=dims[0], vdim=dims[1], add_bias_kv=True)
    state = split.state_dict()
    assert {"q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight", "bias_k"} <= set(state)
    assert tuple(state["k_proj.weight"].shape) == (E, dims[0])
    back = packed_state(state, same_dim=dims == (E, E))
    assert back.keys() == ref.state_dict().keys()
    for key, value in ref.state_dict().items():
        assert torch.equal(back[key], value), key
    # a torch-layout checkpoint loads straight into the split module
    fresh = SplitMultiheadAttention(E, H, kdim=dims[0], vdim=dims[1], add_bias_kv=True)
    fresh.load_state_dict(ref.state_dict())
    for key, value in state.items():
        assert torch.equal(fresh.state_dict()[key], value), key
    again = split.to_torch()
    for key, value in ref.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, E)
        self.attn = nn.MultiheadAttention(E, H, batch_first=True)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(E, H, dim_feedforward=16, batch_first=True, dropout=0.0), 2,
            enable_nested_tensor=False)
        self.head = nn.Linear(E, 3)

    def forward(self, ids):
        x = self.emb(ids)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.head(self.encoder(x).mean(1))


def test_split_attention_in_a_model_and_torch_encoder_layers():
    torch.manual_seed(0)
    model = UserNet().eval()
    ids = torch.randint(0, 20, (N, 5))
    with torch.no_grad():
        before = model(ids)
    names = split_attention(model)
    assert names == ["attn", "encoder.layers.0.self_attn", "encoder.layers.1.self_attn"]
    assert not any(type(m) is nn.MultiheadAttention for m in model.modules())
    with torch.no_grad():
        assert torch.allclose(model(ids), before, atol=1e-5)
    model.train()
    model(ids).sum().backward()  # the slow path of the encoder layer, with grads
    assert split_attention(model) == []

