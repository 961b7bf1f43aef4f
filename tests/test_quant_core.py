"""Numerics of the quantizer core and observers."""

from __future__ import annotations

import pytest
import torch

from penjing.quantization import QuantConfig, QuantSpec, fake_quantize, qparams
from penjing.quantization.core import dequantize, lsq_fake_quantize, quantize, sqnr_db
from penjing.quantization.observers import ActivationObserver, tensor_range


@pytest.mark.parametrize("bits", [2, 3, 4, 8, 16])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("axis", [None, 0])
def test_error_bounded_by_half_step_in_range(bits, symmetric, axis):
    torch.manual_seed(bits)
    x = torch.randn(6, 50) * torch.linspace(0.1, 3, 6)[:, None]
    spec = QuantSpec(bits=bits, symmetric=symmetric, axis=axis)
    lo, hi = tensor_range(x, spec)
    scale, zp = qparams(lo, hi, spec)
    q = quantize(x, scale, zp, spec)
    qmin, qmax = spec.qrange
    assert int(q.min()) >= qmin and int(q.max()) <= qmax
    err = (dequantize(q, scale, zp, axis) - x).abs()
    bound = scale.reshape(-1, 1) / 2 if axis == 0 else scale / 2
    assert bool((err <= bound * (1 + 1e-5) + 1e-7).all())
    # the fused STE kernel computes the same grid
    assert torch.allclose(fake_quantize(x, scale, zp, spec), dequantize(q, scale, zp, axis), atol=1e-6)


def test_saturation_at_the_grid_ends():
    spec = QuantSpec(bits=4, symmetric=True)
    scale, zp = torch.tensor(0.1), torch.tensor(0, dtype=torch.int32)
    x = torch.tensor([-100.0, -0.7, 0.0, 0.7, 100.0])
    q = quantize(x, scale, zp, spec)
    assert q.tolist() == [-7, -7, 0, 7, 7]
    assert fake_quantize(x, scale, zp, spec).tolist() == pytest.approx([-0.7, -0.7, 0.0, 0.7, 0.7])
    # unsigned asymmetric 8-bit grid saturates at 0 and 255
    spec = QuantSpec(bits=8, symmetric=False, signed=False)
    assert quantize(torch.tensor([-5.0, 1e6]), torch.tensor(1.0), torch.tensor(3, dtype=torch.int32), spec).tolist() == [0, 255]


def test_straight_through_gradient_zero_outside_range():
    spec = QuantSpec(bits=4)
    x = torch.tensor([-5.0, 0.31, 5.0], requires_grad=True)
    fake_quantize(x, torch.tensor(0.1), torch.tensor(0, dtype=torch.int32), spec).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 0.0]


def test_lsq_learns_the_scale():
    spec = QuantSpec(bits=4)
    x = torch.randn(1000)
    s = torch.nn.Parameter(torch.tensor(0.01))  # far too small: most values saturate
    opt = torch.optim.Adam([s], lr=0.01)
    for _ in range(200):
        opt.zero_grad()
        (lsq_fake_quantize(x, s, torch.tensor(0), spec) - x).pow(2).mean().backward()
        opt.step()
    assert 0.15 < s.item() < 0.6  # the MSE-optimal 4-bit step of N(0,1) is about 0.3


def test_all_zero_channel_gives_finite_scales():
    w = torch.randn(4, 9)
    w[2] = 0.0
    for symmetric in (True, False):
        spec = QuantSpec(bits=8, symmetric=symmetric, axis=0)
        for method in ("minmax", "percentile", "mse"):
            lo, hi = tensor_range(w, spec, method, ignore_zeros=True)
            scale, zp = qparams(lo, hi, spec)
            assert bool(torch.isfinite(scale).all()) and bool((scale > 0).all())
            out = fake_quantize(w, scale, zp, spec)
            assert bool(torch.isfinite(out).all())
            assert bool((out[2] == 0).all())


def test_zero_is_exact_for_asymmetric_grids():
    x = torch.tensor([0.3, 0.0, 1.7, 0.0, 2.9])  # range not containing 0 on its own
    spec = QuantSpec(bits=3, symmetric=False)
    lo, hi = tensor_range(x, spec, ignore_zeros=True)
    scale, zp = qparams(lo, hi, spec)
    out = fake_quantize(x, scale, zp, spec)
    assert out[1].item() == 0.0 and out[3].item() == 0.0


def test_mse_and_percentile_clip_outliers():
    torch.manual_seed(0)
    x = torch.randn(10_000)
    x[0] = 50.0  # one outlier
    spec = QuantSpec(bits=4)
    errs = {}
    for method in ("minmax", "percentile", "mse"):
        scale, zp = qparams(*tensor_range(x, spec, method, percentile=99.9), spec)
        # error on the bulk of the data (the outlier itself is saturated by design)
        errs[method] = (fake_quantize(x, scale, zp, spec) - x)[1:].pow(2).mean().item()
    assert errs["mse"] < errs["minmax"] / 10
    assert errs["percentile"] < errs["minmax"] / 10


def test_activation_observers():
    mm = ActivationObserver("minmax")
    ma = ActivationObserver("moving_average", momentum=0.5)
    for batch in (torch.tensor([0.0, 1.0]), torch.tensor([0.0, 3.0])):
        mm.observe(batch)
        ma.observe(batch)
    spec = QuantSpec(bits=8, symmetric=False, signed=False)
    assert mm.range(spec)[1].item() == 3.0
    assert ma.range(spec)[1].item() == 2.0
    pct = ActivationObserver("percentile", percentile=99.0)
    pct.observe(torch.cat([torch.rand(10_000), torch.tensor([1000.0])]))
    assert pct.range(spec)[1].item() < 2.0


def test_sqnr():
    x = torch.randn(1000)
    assert sqnr_db(x, x) == float("inf")
    spec = QuantSpec(bits=8)
    scale, zp = qparams(*tensor_range(x, spec), spec)
    assert 35 < sqnr_db(x, fake_quantize(x, scale, zp, spec)) < 50  # ~6 dB per bit


@pytest.mark.parametrize("bits", [0, 1, 9, 33, -8, 8.0, True])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match=r"bits must be one of \[2, 3, 4, 5, 6, 7, 8, 16\] \(2-8 or 16\), got"):
        QuantConfig(bits=bits)


def test_bad_config_values():
    with pytest.raises(ValueError, match="act_bits must be one of"):
        QuantConfig(act_bits=33)
    with pytest.raises(ValueError, match="mode must be one of"):
        QuantConfig(mode="int4")
    with pytest.raises(ValueError, match="observer must be one of"):
        QuantConfig(observer="kl")
    with pytest.raises(ValueError, match="percentile must be in"):
        QuantConfig(percentile=10)
