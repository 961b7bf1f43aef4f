"""Cook-Toom generation of F(m, r): exact in rational arithmetic, for any m and r."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
import torch

from penjing.winograd_conv import transform_multiplications, winograd_transforms


def _apply(mat, vec):
    return [sum(a * b for a, b in zip(row, vec, strict=True)) for row in mat]


def _transpose(mat):
    return [list(col) for col in zip(*mat, strict=True)]


def _matmul(a, b):
    bt = _transpose(b)
    return [[sum(x * y for x, y in zip(row, col, strict=True)) for col in bt] for row in a]


@pytest.mark.parametrize("m, r, points", [
    (2, 3, None), (4, 3, None), (6, 3, None), (2, 5, None), (4, 5, None), (3, 2, None),
    (1, 3, None), (3, 3, None),
    (2, 3, (0, 1, -1, 2)),                         # all finite, no point at infinity
    (4, 3, (0, Fraction(1, 3), -3, 0.5, "inf", 2)),  # user points, any order, float and inf
])
def test_1d_exact(m, r, points):
    """y = A^T [(G g) * (B^T d)] equals the correlation exactly, in Fractions."""
    t = winograd_transforms(m, r, points)
    rng = random.Random(m * 10 + r)
    for _ in range(10):
        d = [Fraction(rng.randint(-50, 50), rng.randint(1, 9)) for _ in range(t.alpha)]
        g = [Fraction(rng.randint(-50, 50), rng.randint(1, 9)) for _ in range(r)]
        y = _apply(t.AT, [u * v for u, v in zip(_apply(t.G, g), _apply(t.BT, d), strict=True)])
        assert y == [sum(g[k] * d[i + k] for k in range(r)) for i in range(m)]


@pytest.mark.parametrize("m, r", [(2, 3), (4, 3), (6, 3), (2, 5)])
def test_2d_nested_exact(m, r):
    """Y = A^T [(G g G^T) * (B^T d B)] A equals the 2-D correlation exactly."""
    t = winograd_transforms(m, r)
    rng = random.Random(7)
    a = t.alpha
    d = [[Fraction(rng.randint(-9, 9)) for _ in range(a)] for _ in range(a)]
    g = [[Fraction(rng.randint(-9, 9), rng.randint(1, 4)) for _ in range(r)] for _ in range(r)]
    u = _matmul(_matmul(t.G, g), _transpose(t.G))
    v = _matmul(_matmul(t.BT, d), _transpose(t.BT))
    y = _matmul(_matmul(t.AT, [[x * z for x, z in zip(ur, vr, strict=True)] for ur, vr in zip(u, v, strict=True)]),
                _transpose(t.AT))
    ref = [[sum(g[p][q] * d[i + p][j + q] for p in range(r) for q in range(r)) for j in range(m)]
           for i in range(m)]
    assert y == ref


def test_f23_matches_lavin_gray_up_to_signs():
    """Our F(2,3) is Lavin & Gray's (their eq. 5) with row j of B^T, row j of G and column j of
    A^T multiplied by signs s_B, s_G, s_A whose product is +1: the same algorithm."""
    t = winograd_transforms(2, 3)
    lavin_bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    lavin_g = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
    lavin_at = [[1, 1, 1, 0], [0, 1, -1, -1]]
    s_b, s_g, s_a = [-1, 1, 1, -1], [-1, 1, 1, 1], [1, 1, 1, -1]
    for j in range(4):
        assert [float(v) for v in t.BT[j]] == [s_b[j] * v for v in lavin_bt[j]]
        assert [float(v) for v in t.G[j]] == [s_g[j] * v for v in lavin_g[j]]
        assert [float(row[j]) for row in t.AT] == [s_a[j] * row[j] for row in lavin_at]
        assert s_b[j] * s_g[j] * s_a[j] == 1


def test_f63_uses_the_well_conditioned_points():
    t = winograd_transforms(6, 3)
    assert t.points == (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2), "inf")
    assert Fraction(21, 4) in t.BT[0] and Fraction(-17, 4) in t.BT[1]  # the known F(6,3) B^T


def test_tensors_cast_each_entry_once():
    at, g, bt = winograd_transforms(6, 3).tensors(torch.float64)
    assert at.shape == (6, 8) and g.shape == (8, 3) and bt.shape == (8, 8)
    assert g[1, 0].item() == float(Fraction(-2, 9))
    assert winograd_transforms(2, 3).tensors()[0].dtype == torch.float32


def test_multiplication_counts_per_tile():
    """The issue's numbers: F(2x2,3x3) 16 vs 36, F(4x4,3x3) 36 vs 144; F(2,3) transforms are
    additions only."""
    f2, f4 = transform_multiplications(2, 3), transform_multiplications(4, 3)
    assert (f2["elementwise"], f2["direct"]) == (16, 36)
    assert (f4["elementwise"], f4["direct"]) == (36, 144)
    assert f2["input"] == 0 and f2["output"] == 0
    assert f4["input"] > 0 and f4["output"] > 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(m=0, r=3), "F(m, r) needs integers m >= 1 and r >= 1, got m=0, r=3"),
    (dict(m=2, r=3, points=(0, 1, 1, "inf")), "interpolation points must be distinct, got ['0', '1', '1']"),
    (dict(m=2, r=3, points=(0, 1, "inf")), "F(m, r) needs alpha = m + r - 1 = 4 points (infinity counts as one), got 3"),
    (dict(m=2, r=3, points=(0, 1, "inf", "inf")), "the point at infinity is given twice"),
    (dict(m=2, r=3, points=(0, 1, -1, "x")), "point 'x' is not a number; use 'inf' for the point at infinity"),
])
def test_bad_points(kwargs, message):
    with pytest.raises(ValueError) as info:
        winograd_transforms(**kwargs)
    assert str(info.value) == message
