"""A factorised layer answers ``.weight`` (the dense product, computed on access, read-only) so
code written for the layer it replaced keeps working, as HF ViT's ``projection.weight.dtype``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import penjing as pj
from penjing.core.layers import is_weighted
from penjing.low_rank.modules import CONV_METHODS, LowRankEmbedding, LowRankLinear, Tucker2Conv2d

try:
    import tensorly  # noqa: F401  (CP factorisation needs it)
    HAVE_TENSORLY = True
except ImportError:
    HAVE_TENSORLY = False


def _factorised() -> list[tuple[nn.Module, nn.Module]]:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    pairs = [(nn.Linear(8, 5), None), (nn.Embedding(7, 6), None)]
    pairs[0] = (pairs[0][0], LowRankLinear.from_module(pairs[0][0], 3))
    pairs[1] = (pairs[1][0], LowRankEmbedding.from_module(pairs[1][0], 3))
    for name, cls in CONV_METHODS.items():
        if name == "cp" and not HAVE_TENSORLY:
            continue
        rank = (3, 3) if cls is Tucker2Conv2d else 3
        pairs.append((conv, cls.from_module(conv, rank)))
    return pairs


@pytest.mark.parametrize("index", range(len(_factorised())))
def test_weight_is_the_dense_product_read_only_and_not_a_parameter(index):
    original, low = _factorised()[index]
    weight = low.weight
    assert torch.equal(weight, low.dense_weight())
    assert weight.shape == original.weight.shape
    assert weight.dtype == original.weight.dtype and weight.device == original.weight.device
    assert "weight" not in dict(low.named_parameters(recurse=False))
    assert not any(k == "weight" for k in low.state_dict())
    assert not is_weighted(low)  # penjing's layer rules still see only the factors
    with pytest.raises(AttributeError, match="has no setter"):
        low.weight = torch.zeros_like(weight)
    weight.sum().backward()  # computed from the factors: gradients reach them
    assert all(layer.weight.grad is not None for layer in low)


def test_weight_follows_the_factors_and_their_dtype():
    torch.manual_seed(0)
    low = LowRankLinear.from_module(nn.Linear(6, 4), 2)
    with torch.no_grad():
        low[0].weight.mul_(2)
    assert torch.allclose(low.weight, low[1].weight @ low[0].weight)
    assert low.double().weight.dtype == torch.float64


class ReadsWeightDtype(nn.Module):
    """As HF's ViTEmbeddings: casts the input to the patch conv's weight dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.projection = nn.Conv2d(3, 16, 4, stride=4)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.projection.weight.dtype)
        return self.head(self.projection(x).flatten(2).mean(2))


def test_a_model_reading_weight_dtype_runs_after_lowrank():
    torch.manual_seed(0)
    model = ReadsWeightDtype()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    pj.lowrank(model, rank=4, layers="projection", example_inputs=x.float())
    assert "projection" in {t.name for t in pj.last_report(model).touched}
    assert model(x).dtype == torch.float32
