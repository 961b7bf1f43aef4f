"""Transformer-style int8: per-row dynamic activations, SmoothQuant, int8 embeddings."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from penjing.core.report import last_report
from penjing.quantization import Int8Embedding, Int8Linear, QuantConfig, convert, quantize


class Encoder(nn.Module):
    """Embedding -> LayerNorm with outlier channels -> MLP -> mean pool."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, 32)
        self.norm = nn.LayerNorm(32)
        self.up, self.down = nn.Linear(32, 64), nn.Linear(64, 32)
        with torch.no_grad():
            self.norm.weight[[3, 17]] = torch.tensor([14.0, -12.0])  # outliers up to about +-30

    def forward(self, ids):
        h = self.norm(self.emb(ids))
        return (h + self.down(torch.relu(self.up(h)))).mean(1)


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 50, (n, 12), generator=torch.Generator().manual_seed(seed))


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=1)


@pytest.mark.parametrize("smooth", [None, 0.5, "auto"])
def test_dynamic_int8_is_batch_independent_and_matches_its_fake_quant(smooth):
    model = Encoder().eval()
    ref_model = copy.deepcopy(model)
    quantize(model, QuantConfig(activations="dynamic", smooth_alpha=smooth), data=[_ids(16, 1)], progress=False)
    x = _ids(8, 2)
    fake = model(x)
    int8 = convert(copy.deepcopy(model))
    assert isinstance(int8.up, Int8Linear) and int8.up.mode == "dynamic" and isinstance(int8.emb, Int8Embedding)
    out = int8(x)
    # each row has its own scale and the int32 sums are exact: one sample alone gives
    # exactly what it gives inside any batch
    for i in range(len(x)):
        assert torch.equal(int8(x[i:i + 1]), out[i:i + 1])
    assert torch.allclose(out, fake, atol=1e-4)  # the same integers; float rescale order aside
    assert float(_cos(out, ref_model(x)).min()) > 0.99


def test_smoothing_preserves_the_float_function_and_helps_with_outliers():
    model = Encoder().eval()
    x = _ids(16, 3)
    ref = model(x)
    plain = quantize(copy.deepcopy(model), QuantConfig(activations="dynamic"), progress=False)
    smooth = quantize(copy.deepcopy(model), QuantConfig(activations="dynamic", smooth_alpha=0.5),
                      data=[_ids(16, 1)], progress=False)
    assert "SmoothQuant: 2 of 2 Linear layer(s) smoothed, alpha 0.5-0.5" in last_report(smooth).notes
    # in float (quantizers off) the migrated weights and the 1/s input factor cancel
    up, rows = smooth.up, model.norm(model.emb(x)).reshape(-1, 32)
    w = up.parametrizations.weight.original
    assert torch.allclose((rows * up.input_quant.smooth) @ w.t(), rows @ model.up.weight.t(), atol=1e-4)
    err_plain = float((plain(x) - ref).norm())
    err_smooth = float((smooth(x) - ref).norm())
    assert err_smooth < err_plain


def test_int8_embedding_is_bit_identical_to_its_fake_quant():
    emb = nn.Sequential(nn.Embedding(30, 6, padding_idx=0))
    quantize(emb, QuantConfig(activations="none"))
    ids = torch.randint(0, 30, (4, 5))
    fake = emb(ids)
    int8 = convert(copy.deepcopy(emb))
    assert int8[0].weight_int8.dtype == torch.int8 and torch.equal(int8(ids), fake)


def test_smoothing_needs_dynamic_activations_and_is_rolled_back_on_failure():
    with pytest.raises(ValueError, match="QuantConfig.smooth_alpha moves activation outliers .* needs "
                                         "activations='dynamic'"):
        QuantConfig(smooth_alpha=0.5)
    model = Encoder().eval()
    model.spare = nn.Linear(32, 32)  # never called
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"layer\(s\) spare never ran during calibration"):
        quantize(model, QuantConfig(activations="dynamic", smooth_alpha=0.5), data=[_ids(8, 1)], progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
