"""WinogradConv2d equals nn.Conv2d: float64 to 1e-10, float32 within the documented bound."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from penjing.winograd_conv import WinogradConv2d, filter_transform, winograd_conv2d

torch.set_num_threads(1)

# Documented float32 bound (docs/winograd.md): max |y - y_ref| <= C_m * eps32 * scale, where
# scale = max over outputs of (|x| conv |w|) + |b| and y_ref is float64 direct convolution.
# Measured worst cases: F(2) 1.2e-7, F(4) 1.8e-6, F(6) 3.3e-6 relative (direct conv: 1e-7).
EPS32 = torch.finfo(torch.float32).eps
BOUND = {2: 8, 4: 64, 6: 256}

shapes = st.fixed_dictionaries({
    "batch": st.integers(1, 3), "cin": st.integers(1, 9), "cout": st.integers(1, 9),
    "h": st.integers(1, 19), "w": st.integers(1, 19), "r": st.sampled_from([3, 5]),
    "pad": st.sampled_from([0, 1, 2]), "m": st.sampled_from([2, 4, 6]), "bias": st.booleans(),
    "seed": st.integers(0, 2**16),
})


def _case(p, dtype):
    if p["h"] + 2 * p["pad"] < p["r"] or p["w"] + 2 * p["pad"] < p["r"]:
        p = {**p, "h": p["h"] + p["r"], "w": p["w"] + p["r"]}  # keep the output non-empty
    gen = torch.Generator().manual_seed(p["seed"])
    conv = nn.Conv2d(p["cin"], p["cout"], p["r"], padding=p["pad"], bias=p["bias"]).to(dtype)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen, dtype=dtype))
    x = torch.randn(p["batch"], p["cin"], p["h"], p["w"], generator=gen, dtype=dtype)
    return conv, WinogradConv2d.from_conv(conv, p["m"]), x


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_float64_agrees_to_1e_10(p):
    conv, wconv, x = _case(p, torch.float64)
    with torch.no_grad():
        y, ref = wconv(x), conv(x)
    assert y.shape == ref.shape
    assert (y - ref).abs().max().item() <= 1e-10


@settings(max_examples=60, deadline=None)
@given(shapes.filter(lambda p: p["r"] == 3))
def test_float32_within_documented_bound(p):
    conv, wconv, x = _case(p, torch.float32)
    with torch.no_grad():
        y = wconv(x).double()
        w64 = conv.weight.double()
        b64 = None if conv.bias is None else conv.bias.double()
        ref = F.conv2d(x.double(), w64, b64, padding=p["pad"])
        scale = F.conv2d(x.double().abs(), w64.abs(), None if b64 is None else b64.abs(),
                         padding=p["pad"]).max().item()
    assert (y - ref).abs().max().item() <= BOUND[p["m"]] * EPS32 * max(scale, 1e-30)


def test_float32_error_grows_with_tile_as_lavin_gray_report():
    """F(2x2) about as accurate as direct; F(4x4) and F(6x6) clearly worse (Table 4's trend)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 32, 20, 20, generator=gen).relu()
    w = torch.randn(32, 32, 3, 3, generator=gen) * (2 / (32 * 9)) ** 0.5
    ref = F.conv2d(x.double(), w.double(), padding=1)
    err = {"direct": (F.conv2d(x, w, padding=1).double() - ref).abs().max().item()}
    for m in (2, 4, 6):
        err[m] = (winograd_conv2d(x, filter_transform(w, m), 3, m, (1, 1, 1, 1)).double() - ref).abs().max().item()
    assert err[2] < 4 * err["direct"]
    assert err[4] > 2 * err[2] and err[6] > 2 * err[2]


@pytest.mark.parametrize("m", [2, 4, 6])
def test_gradcheck_float64(m):
    gen = torch.Generator().manual_seed(m)
    x = torch.randn(2, 2, 5, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: winograd_conv2d(x, filter_transform(w, m), 3, m, (1, 2, 0, 1), b), (x, w, b))


def test_gradients_match_conv2d_float32():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, padding=1)
    wconv = WinogradConv2d.from_conv(copy.deepcopy(conv), 4)
    x = torch.randn(3, 6, 9, 10)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    (conv(xa) ** 2).sum().backward()
    (wconv(xb) ** 2).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(wconv.weight.grad, conv.weight.grad, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(wconv.bias.grad, conv.bias.grad, rtol=1e-4, atol=1e-3)


def test_filter_transform_cached_and_refreshed_when_the_weight_changes():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    wconv = WinogradConv2d.from_conv(conv, 2)
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        wconv(x)
        u = wconv._u_cache[2][1]
        wconv(x)
        assert wconv._u_cache[2][1] is u  # reused
        conv.weight.mul_(-3.0)  # in place (shared Parameter): version counter moves
        torch.testing.assert_close(wconv(x), conv(x), rtol=1e-5, atol=1e-5)
        assert wconv._u_cache[2][1] is not u
        wconv.load_state_dict({"weight": torch.randn(4, 4, 3, 3), "bias": torch.zeros(4)})
        torch.testing.assert_close(wconv(x), F.conv2d(x, wconv.weight, wconv.bias, padding=1),
                                   rtol=1e-5, atol=1e-5)


def test_trains_like_conv2d():
    """A few SGD steps through WinogradConv2d follow nn.Conv2d (the cache never goes stale)."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3))
    win = copy.deepcopy(ref)
    win[0], win[2] = WinogradConv2d.from_conv(win[0], 4), WinogradConv2d.from_conv(win[2], 2)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (ref, win)]
    x, target = torch.randn(4, 3, 9, 9), torch.randn(4, 4, 7, 7)
    for _ in range(5):
        for model, opt in zip((ref, win), opts, strict=True):
            opt.zero_grad()
            F.mse_loss(model(x), target).backward()
            opt.step()
        with torch.no_grad():
            win.eval()
            torch.testing.assert_close(win(x), ref(x), rtol=1e-4, atol=1e-5)
            win.train()


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
def test_drop_in_details():
    conv = nn.Conv2d(3, 4, 3, padding="same")
    wconv = WinogradConv2d.from_conv(conv)
    assert wconv.weight is conv.weight and wconv.bias is conv.bias
    assert wconv.state_dict().keys() == conv.state_dict().keys()
    assert isinstance(wconv, nn.Conv2d) and "m=auto" in repr(wconv)
    x = torch.randn(3, 10, 7)
    with torch.no_grad():
        torch.testing.assert_close(wconv(x), conv(x), rtol=1e-5, atol=1e-5)  # unbatched input
        xc = torch.randn(2, 3, 10, 7).to(memory_format=torch.channels_last)
        torch.testing.assert_close(wconv(xc), conv(xc), rtol=1e-5, atol=1e-5)
        # the output keeps the input's memory format, like nn.Conv2d (so .view() works on NCHW)
        assert wconv(xc).is_contiguous(memory_format=torch.channels_last)
        assert wconv(xc.contiguous()).view(2, -1).shape == (2, 4 * 10 * 7)
    even = nn.Conv2d(2, 2, 4, padding="same")  # asymmetric 'same' padding
    with torch.no_grad():
        torch.testing.assert_close(WinogradConv2d.from_conv(even, 2)(x[:2]), even(x[:2]),
                                   rtol=1e-5, atol=1e-5)
    direct = WinogradConv2d(3, 4, 3, padding=1, m=4)
    assert direct.m == 4 and direct.weight.shape == (4, 3, 3, 3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(stride=2), "WinogradConv2d: Winograd needs stride 1, got stride=(2, 2)"),
    (dict(dilation=2), "WinogradConv2d: Winograd needs dilation 1, got dilation=(2, 2)"),
    (dict(groups=2), "WinogradConv2d: Winograd needs groups=1, got groups=2 (grouped and depthwise "
                     "convs have no channel GEMM for the transforms to pay off)"),
    (dict(padding_mode="reflect", padding=1), "WinogradConv2d: Winograd needs zero padding, got padding_mode='reflect'"),
    (dict(kernel_size=(3, 5)), "WinogradConv2d: Winograd needs a square kernel, got (3, 5)"),
    (dict(kernel_size=1), "WinogradConv2d: a 1x1 kernel has nothing to save with Winograd (kernel_size must be >= 2)"),
    (dict(m=0), "output tile m must be an integer >= 1 (an output tile size), got 0"),
])
def test_unsupported_configurations(kwargs, message):
    args = dict(in_channels=4, out_channels=4, kernel_size=3) | kwargs
    with pytest.raises(ValueError) as info:
        WinogradConv2d(**args)
    assert str(info.value) == message


def test_from_conv_refuses_strided_conv():
    with pytest.raises(ValueError) as info:
        WinogradConv2d.from_conv(nn.Conv2d(4, 4, 3, stride=2))
    assert str(info.value) == "Conv2d: Winograd needs stride 1, got stride=(2, 2)"
    with pytest.raises(TypeError, match="from_conv needs an nn.Conv2d, got Linear"):
        WinogradConv2d.from_conv(nn.Linear(3, 3))


def test_bad_input_shape():
    wconv = WinogradConv2d(4, 4, 3)
    with pytest.raises(ValueError, match=r"expects \(N, 4, H, W\) input, got \(1, 3, 8, 8\)"):
        wconv(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="input 2x2 \\(padded 2x2\\) is smaller than the 3x3 kernel"):
        wconv(torch.randn(1, 4, 2, 2))


class _Mask(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.register_buffer("mask", torch.ones(shape))

    def forward(self, w):
        return w * self.mask


def test_parametrized_weight_is_never_served_stale():
    """A pruning-style parametrization on a WinogradConv2d: the weight is recomputed on every
    access (a fresh tensor that may reuse a freed address), so U must not be cached."""
    from torch.nn.utils import parametrize

    torch.manual_seed(0)
    wconv = WinogradConv2d(4, 4, 3, padding=1, m=2)
    parametrize.register_parametrization(wconv, "weight", _Mask(wconv.weight.shape))
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        before = wconv(x)
        wconv.parametrizations.weight[0].mask.zero_()
        torch.testing.assert_close(wconv(x), wconv.bias.view(1, 4, 1, 1).expand_as(before))
        assert not torch.allclose(before, wconv(x))
