"""pick_layers splits nn.MultiheadAttention only for verbs that act on Linear layers: Winograd
(2-D convs only) leaves attention packed and reports it as skipped."""

from __future__ import annotations

import torch
from torch import nn

import penjing as pj
from penjing.core.attention import SplitMultiheadAttention


class ConvAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).flatten(2).transpose(1, 2)  # (N, H*W, 8) tokens
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(a.mean(1))


def test_winograd_leaves_multihead_attention_packed_and_reports_it():
    torch.manual_seed(0)
    model = ConvAttention().eval()
    x = torch.randn(2, 3, 6, 6)
    state = {k: v.clone() for k, v in model.attn.state_dict().items()}
    pj.winograd(model, example_inputs=x, m=2, measure=False)  # no timing: conv always swapped
    assert type(model.attn) is nn.MultiheadAttention
    assert set(model.attn.state_dict()) == set(state)
    assert all(torch.equal(model.attn.state_dict()[k], v) for k, v in state.items())
    report = pj.last_report(model)
    assert [t.name for t in report.touched] == ["conv"]
    skipped = {s.name: s.reason for s in report.skipped}
    assert skipped["attn"] == "MultiheadAttention is not an nn.Conv2d (Winograd computes 2-D convolutions)"
    assert "head" in skipped
    assert not any("MultiheadAttention into" in n for n in report.notes)


def test_winograd_explicit_selector_keeps_attention_packed():
    model = ConvAttention().eval()
    pj.winograd(model, layers="conv", example_inputs=torch.randn(1, 3, 6, 6), m=2, measure=False)
    assert [t.name for t in pj.last_report(model).touched] == ["conv"]
    assert type(model.attn) is nn.MultiheadAttention


def test_weight_verbs_still_split_attention():
    model = ConvAttention()
    pj.prune(model, sparsity=0.5)
    assert isinstance(model.attn, SplitMultiheadAttention)
    assert "attn.q_proj" in {t.name for t in pj.last_report(model).touched}
