"""Pruning torchvision and timm models (run in an environment with torchvision and timm; the
default one skips): issue 15's failures, each a test."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from penjing.core.report import last_report
from penjing.pruning import PruneConfig, prune, resize_like

torchvision = pytest.importorskip("torchvision")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small_vit() -> nn.Module:
    """torchvision's ViT (the vit_b_16 code) at a small size, so the test runs in seconds."""
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2,
                                                 num_heads=4, hidden_dim=64, mlp_dim=128,
                                                 num_classes=10)
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initializes the head
    return model.eval()


def _linear_zeros(model: nn.Module) -> tuple[int, int, int]:
    ws = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    return sum(int((w == 0).sum()) for w in ws), sum(w.numel() for w in ws), len(ws)


def test_vit_unstructured_80_percent_is_exact_over_every_linear_including_qkv():
    model = small_vit()
    x = torch.rand(2, 3, 32, 32)
    prune(model, PruneConfig(sparsity=0.8))
    zeros, total, count = _linear_zeros(model)
    per_layer = [round(0.8 * m.weight.numel()) for m in model.modules() if isinstance(m, nn.Linear)]
    assert zeros == sum(per_layer) and abs(zeros / total - 0.8) < 1e-3
    assert count == 2 * (4 + 2) + 1  # q, k, v, out + the MLP's two per block, and the head
    assert "split 2 MultiheadAttention into q/k/v/out Linear" in last_report(model).notes
    assert model(x).shape == (2, 10)


def test_vit_structured_all_layers_runs_and_reloads():
    model = small_vit()
    fresh = copy.deepcopy(model)
    x = torch.rand(2, 3, 32, 32)
    prune(model, PruneConfig(sparsity=0.5, granularity="channel"), example_inputs=x)
    # the MLP hidden widths halve; the residual width is fixed by ViT's code (hidden_dim)
    assert [b.mlp[0].out_features for b in model.encoder.layers] == [64, 64]
    skipped = {s.name: s.reason for s in last_report(model).skipped}
    assert skipped["conv_proj"].startswith("kept whole: pruning the channels it emits breaks")
    out = model(x)
    from penjing.core.attention import split_attention

    split_attention(fresh)
    state = model.state_dict()
    rebuilt = resize_like(fresh, state)
    rebuilt.load_state_dict(state)
    assert torch.allclose(rebuilt.eval()(x), out, atol=1e-5)


def test_convnext_conv2d_only_removes_channels():
    torch.manual_seed(0)
    model = torchvision.models.convnext_tiny().eval()
    x = torch.rand(1, 3, 32, 32)
    dense = n_params(model)
    channels = model.features[0][0].out_channels
    with pytest.warns(UserWarning, match="Unwrapped parameters detected"):  # torch-pruning's
        prune(model, PruneConfig(sparsity=0.25, granularity="channel", layers="Conv2d"),
              example_inputs=x)
    assert model.features[0][0].out_channels == channels - round(0.25 * channels)
    assert n_params(model) < 0.8 * dense
    assert model(x).shape == (1, 1000)


def test_timm_mobilenetv3_reloads_into_the_same_function():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050").eval()
    fresh = copy.deepcopy(model)
    x = torch.rand(1, 3, 64, 64)
    prune(model, PruneConfig(sparsity=0.3, granularity="channel"), example_inputs=x)
    state = model.state_dict()
    rebuilt = resize_like(fresh, state)
    rebuilt.load_state_dict(state)
    rebuilt.eval()
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model(x), atol=1e-5)  # BatchNormAct2d kept its act
    acts = [type(m.act).__name__ for m in rebuilt.modules() if type(m).__name__ == "BatchNormAct2d"]
    assert acts == [type(m.act).__name__ for m in fresh.modules() if type(m).__name__ == "BatchNormAct2d"]
