"""Multiplication accounting for a convolution layer: direct vs Winograd F(m x m, r x r).

Counts are *multiplications*, the quantity the Winograd algorithm reduces, in the form the
hardware cost model uses. Per output tile of m x m and per (input, output) channel pair
the elementwise stage needs ``alpha^2 = (m + r - 1)^2`` multiplications where direct
convolution needs ``m^2 r^2`` (F(2x2, 3x3): 16 vs 36, 2.25x; F(4x4, 3x3): 36 vs 144, 4x).

The transforms are counted from the generated matrices themselves: a product with a matrix
entry of 0 or +-1 is free (an add, a subtraction or nothing), every other entry is one
multiplication. So the count depends on the interpolation points, as it should:

* input transform ``B^T d B``: once per tile and input channel (shared by all K outputs);
* output transform ``A^T M A``: once per tile and output channel (shared by all C inputs);
* filter transform ``G g G^T``: once per weight, cached, so zero per inference; reported apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from penjing.winograd_conv.transforms import Matrix, winograd_transforms


@dataclass(frozen=True)
class ConvMultiplications:
    """Multiplications of one conv layer for one forward pass of ``batch`` images."""

    m: int
    r: int
    tiles: int                 # output tiles per image (ceil(Ho/m) * ceil(Wo/m))
    direct: int                # N * K * C * Ho * Wo * r^2
    elementwise: int           # N * tiles * K * C * alpha^2
    input_transform: int       # N * tiles * C * (multiplications of B^T d B)
    output_transform: int      # N * tiles * K * (multiplications of A^T M A)
    filter_transform: int      # K * C * (multiplications of G g G^T), once per weight

    @property
    def winograd(self) -> int:
        """Per-inference total: elementwise stage plus input and output transforms."""
        return self.elementwise + self.input_transform + self.output_transform

    @property
    def reduction(self) -> float:
        """``direct / winograd`` (transforms included)."""
        return self.direct / self.winograd if self.winograd else float("inf")

    @property
    def elementwise_reduction(self) -> float:
        """``direct / elementwise``: the textbook ratio (2.25x for F(2x2,3x3), 4x for F(4x4,3x3)),
        less where tiles overhang the output."""
        return self.direct / self.elementwise if self.elementwise else float("inf")

    def as_dict(self) -> dict[str, int | float]:
        return {**asdict(self), "winograd": self.winograd, "reduction": self.reduction}


def _nontrivial(mat: Matrix) -> int:
    return sum(1 for row in mat for v in row if v not in (0, 1, -1))


def transform_multiplications(m: int, r: int, points=None) -> dict[str, int]:
    """Multiplications of each 2-D transform of F(m x m, r x r) for one tile / one filter.

    A nested product ``X^T D X`` with ``X^T`` of shape (p, q) and ``D`` of shape (q, q) is
    ``q`` matrix-vector products for ``X^T D`` plus ``p`` for ``(X^T D) X``.
    """
    t = winograd_transforms(m, r, points)
    a = t.alpha
    return {
        "input": 2 * a * _nontrivial(t.BT),                 # (a x a)(a x a), twice
        "output": (a + m) * _nontrivial(t.AT),              # (m x a)(a x a), then (m x a)(a x m)
        "filter": (r + a) * _nontrivial(t.G),               # (a x r)(r x r), then (a x r)(r x a)
        "elementwise": a * a,
        "direct": m * m * r * r,
    }


def conv_multiplications(in_channels: int, out_channels: int, out_h: int, out_w: int,
                         kernel_size: int, m: int, batch: int = 1, points=None) -> ConvMultiplications:
    """Multiplications of a stride-1 ``kernel_size`` x ``kernel_size`` conv producing
    ``out_h`` x ``out_w`` maps, direct vs Winograd F(m x m, r x r) (tiles overhanging the
    output are counted in full: that is the work done)."""
    if min(in_channels, out_channels, out_h, out_w, kernel_size, m, batch) < 1:
        raise ValueError("channels, output size, kernel size, m and batch must all be >= 1")
    r = kernel_size
    per = transform_multiplications(m, r, points)
    tiles = -(-out_h // m) * -(-out_w // m)
    return ConvMultiplications(
        m=m, r=r, tiles=tiles,
        direct=batch * out_channels * in_channels * out_h * out_w * r * r,
        elementwise=batch * tiles * out_channels * in_channels * per["elementwise"],
        input_transform=batch * tiles * in_channels * per["input"],
        output_transform=batch * tiles * out_channels * per["output"],
        filter_transform=out_channels * in_channels * per["filter"],
    )


def layer_multiplications(conv, input_shape: tuple[int, ...], m: int | None = None,
                          tiles: tuple[int, ...] = (2, 4)) -> ConvMultiplications:
    """:func:`conv_multiplications` for a conv module (``nn.Conv2d`` or ``WinogradConv2d``)
    given its input shape ``(N, C, H, W)``: the entry point for the hardware cost model.

    ``m`` defaults to the module's own tile (a ``WinogradConv2d``) or else the cost model's
    choice among ``tiles``; the result's ``direct`` field is the plain conv's count either way.
    """
    if len(input_shape) != 4:
        raise ValueError(f"input_shape must be (N, C, H, W), got {tuple(input_shape)}")
    if tuple(conv.stride) != (1, 1) or tuple(conv.dilation) != (1, 1) or conv.groups != 1:
        raise ValueError("Winograd multiplications are defined for stride-1, dilation-1, groups=1 convs")
    n, _, h, w = input_shape
    left, right, top, bottom = conv._reversed_padding_repeated_twice
    r = conv.kernel_size[0]
    ho, wo = h + top + bottom - r + 1, w + left + right - r + 1
    m = m or getattr(conv, "m", None)
    if m is None:
        from penjing.winograd_conv.autotune import choose_tile_by_cost

        m = choose_tile_by_cost(conv.in_channels, conv.out_channels, ho, wo, r, n, tiles)
    return conv_multiplications(conv.in_channels, conv.out_channels, ho, wo, r, m, n)
