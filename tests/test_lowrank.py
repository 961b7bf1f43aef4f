"""Low-rank factorisations: exactness where the weight really has low rank, exact conv
geometry, monotone error, and the factorised modules' bookkeeping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowrank_plans import decompose
from penjing.core.report import last_report
from penjing.low_rank import (
    ChannelSplitConv2d,
    CPConv2d,
    LowRankConfig,
    LowRankLinear,
    SpatialSplitConv2d,
    Tucker2Conv2d,
)
from penjing.low_rank.plan import weighted_macs

torch.set_num_threads(1)


def rank_r_matrix(out: int, inp: int, r: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, r, generator=g, dtype=torch.float64) @ torch.randn(r, inp, generator=g,
                                                                               dtype=torch.float64)


def separable_conv(c: int, n: int, k: tuple[int, int], r: int, seed: int = 0, **geometry) -> nn.Conv2d:
    """A conv whose kernel is exactly a sum of ``r`` (vertical x horizontal) separable filters."""
    g = torch.Generator().manual_seed(seed)
    vertical = torch.randn(r, c, k[0], generator=g, dtype=torch.float64)
    horizontal = torch.randn(n, r, k[1], generator=g, dtype=torch.float64)
    conv = nn.Conv2d(c, n, k, **geometry).double()
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("rci,nrj->ncij", vertical, horizontal))
    return conv


def test_true_rank_r_matrix_is_recovered_exactly_at_rank_r():
    layer = nn.Linear(30, 40).double()
    with torch.no_grad():
        layer.weight.copy_(rank_r_matrix(40, 30, 5))
    x = torch.randn(7, 30, dtype=torch.float64)
    low = LowRankLinear.from_module(layer, 5)
    assert isinstance(low[0], nn.Linear) and low[0].bias is None and low[0].out_features == 5
    assert torch.allclose(low(x), layer(x), rtol=0, atol=1e-10)
    assert torch.allclose(low.dense_weight(), layer.weight, atol=1e-10)
    # and one rank less is visibly not exact
    assert (LowRankLinear.from_module(layer, 4)(x) - layer(x)).abs().max() > 1e-2


def test_energy_one_finds_the_numerical_rank_in_float32():
    model = nn.Sequential(nn.Linear(60, 80))
    with torch.no_grad():
        model[0].weight.copy_(rank_r_matrix(80, 60, 6).float())
    x = torch.randn(5, 60)
    expected = model(x)
    result = decompose(model, LowRankConfig(energy=1.0))
    assert result.ranks == {"0": 6}
    assert torch.allclose(model(x), expected, atol=1e-4)
    assert result.layers[0].error < 1e-6


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", [0, 1])
def test_separable_conv_is_reproduced_exactly_by_the_spatial_split(stride, padding):
    conv = separable_conv(4, 6, (3, 3), r=3, stride=stride, padding=padding)
    x = torch.randn(2, 4, 11, 10, dtype=torch.float64)
    split = SpatialSplitConv2d.from_module(conv, 3)
    assert split[0].kernel_size == (3, 1) and split[1].kernel_size == (1, 3)
    assert split[0].stride == (stride, 1) and split[1].stride == (1, stride)
    assert split[0].padding == (padding, 0) and split[1].padding == (0, padding)
    out = split(x)
    assert out.shape == conv(x).shape
    assert torch.allclose(out, conv(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("geometry", [
    {"stride": (2, 1), "padding": (1, 2), "dilation": (2, 1)},
    {"padding": "same", "dilation": 2},
    {"padding": 1, "padding_mode": "reflect"},
    {"stride": 3, "padding": (0, 2), "padding_mode": "circular"},
])
def test_exact_geometry_for_rectangular_kernels_dilation_and_padding_modes(geometry):
    conv = separable_conv(3, 5, (3, 5), r=2, **geometry)
    x = torch.randn(2, 3, 13, 12, dtype=torch.float64)
    expected = conv(x)
    exact = {
        "spatial": SpatialSplitConv2d.from_module(conv, 2),
        "channel": ChannelSplitConv2d.from_module(conv, 5),  # full rank of a 5-row matrix
        "tucker": Tucker2Conv2d.from_module(conv, (3, 5)),  # full channel ranks
    }
    for name, module in exact.items():
        assert torch.allclose(module(x), expected, rtol=0, atol=1e-9), name


def test_cp_split_keeps_geometry():
    pytest.importorskip("tensorly")
    conv = separable_conv(3, 4, (3, 3), r=2, stride=2, padding=1)
    cp = CPConv2d.from_module(conv, 12)
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    assert [m.groups for m in cp] == [1, 12, 12, 1]
    # ALS is an iterative fit; what must be exact is that the module computes its own kernel
    ref = nn.functional.conv2d(x, cp.dense_weight(), conv.bias, stride=2, padding=1)
    assert torch.allclose(cp(x), ref, rtol=0, atol=1e-9)
    assert (cp.dense_weight() - conv.weight).norm() / conv.weight.norm() < 0.05


def test_bias_dtype_and_output_shape_are_kept():
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=True)
    for module in (ChannelSplitConv2d.from_module(conv, 4), SpatialSplitConv2d.from_module(conv, 4),
                   Tucker2Conv2d.from_module(conv, (4, 4))):
        assert module[-1].bias is not None and torch.equal(module[-1].bias, conv.bias)
        assert all(m.bias is None for m in list(module)[:-1])
        assert module[0].weight.dtype == torch.float32
        assert module(torch.randn(1, 8, 6, 6)).shape == (1, 16, 6, 6)


@pytest.mark.parametrize("method", ["svd", "channel", "spatial", "tucker"])
def test_error_decreases_monotonically_with_rank(method):
    torch.manual_seed(0)
    if method == "svd":
        layer = nn.Linear(24, 20)
        build, ranks = LowRankLinear.from_module, range(1, 21)
    else:
        layer = nn.Conv2d(6, 8, 3)
        cls = {"channel": ChannelSplitConv2d, "spatial": SpatialSplitConv2d, "tucker": Tucker2Conv2d}[method]
        build = cls.from_module
        full = {"channel": 8, "spatial": 18}  # min(N, C*K*K), min(C*K, N*K)
        ranks = [(r, r + 2) for r in range(1, 7)] if method == "tucker" else range(1, full.get(method, 0) + 1)
    w = layer.weight.detach().double()
    errors = [float((build(layer, r).dense_weight().detach().double() - w).norm() / w.norm())
              for r in ranks]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-5  # full rank is exact


def test_tucker_hooi_refinement_is_no_worse_than_hosvd():
    pytest.importorskip("tensorly")
    torch.manual_seed(1)
    conv = nn.Conv2d(12, 16, 3)
    w = conv.weight.detach().double()
    hosvd = Tucker2Conv2d.from_module(conv, (4, 5))
    hooi = Tucker2Conv2d.from_module(conv, (4, 5), refine=True)
    err = [float((m.dense_weight().detach().double() - w).norm()) for m in (hosvd, hooi)]
    assert err[1] <= err[0] + 1e-6


def test_report_rows_and_mac_accounting_match_a_recount():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 32, (3, 5), padding=(1, 2)), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, groups=32), nn.Flatten(), nn.LazyLinear(10))
    example = torch.randn(1, 3, 12, 12)
    model(example)
    for method, rank in (("channel", 4), ("spatial", 4), ("tucker", (3, 3))):
        trial = nn.Sequential(*[m for m in __import__("copy").deepcopy(model)])
        before = weighted_macs(trial, example)
        result = decompose(trial, LowRankConfig(rank={"2": rank, "0": rank}, conv_method=method),
                                 example_inputs=example)
        after = weighted_macs(trial, example)
        assert result.flops_before == sum(before.values())
        assert result.flops_after == sum(after.values()), method
        assert result.params_after == sum(p.numel() for p in trial.parameters())
        rows = {r.name: r for r in result.layers}
        assert "4" not in rows  # depthwise: not a candidate, a recorded skip
        skipped = {s.name: s.reason for s in last_report(trial).skipped}
        assert skipped["4"] == "depthwise conv (groups=32): a split would mix the groups"
        assert rows["6"].reason == skipped["6"] == "no LowRankConfig.rank key matches this layer"
        assert rows["2"].flops_after == sum(v for k, v in after.items() if k.startswith("2."))


def test_state_dict_round_trip_through_ranks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 36, 50), nn.Linear(50, 10))
    x = torch.randn(2, 3, 8, 8)
    result = decompose(model, LowRankConfig(params=0.4, conv_method="spatial"), example_inputs=x)
    rebuilt = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 36, 50), nn.Linear(50, 10))
    decompose(rebuilt, LowRankConfig(rank=result.ranks, conv_method="spatial"))
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt(x), model(x))


def test_decomposing_twice_leaves_the_factors_alone():
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    decompose(model, LowRankConfig(rank=8, layers="0"))
    again = decompose(model, LowRankConfig(rank=4))
    assert {s.name: s.reason for s in last_report(model).skipped} == {
        "0.0": "already a factor of a low-rank layer", "0.1": "already a factor of a low-rank layer"}
    assert again.ranks == {"1": 4}
    assert isinstance(model[0], LowRankLinear) and model[0].rank == 8
