"""``WinogradConv2d``: a drop-in ``nn.Conv2d`` (stride 1, dilation 1, groups 1) computed with
Winograd F(m x m, r x r)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from penjing.winograd_conv.functional import (
    Padding4,
    filter_transform,
    output_size,
    winograd_conv2d,
)


def _check_supported(conv_like: str, kernel_size, stride, dilation, groups, padding_mode) -> None:
    """Raise a ValueError naming the first thing Winograd cannot do for this conv."""
    if tuple(stride) != (1, 1):
        raise ValueError(f"{conv_like}: Winograd needs stride 1, got stride={tuple(stride)}")
    if tuple(dilation) != (1, 1):
        raise ValueError(f"{conv_like}: Winograd needs dilation 1, got dilation={tuple(dilation)}")
    if groups != 1:
        raise ValueError(f"{conv_like}: Winograd needs groups=1, got groups={groups} (grouped and "
                         "depthwise convs have no channel GEMM for the transforms to pay off)")
    if padding_mode != "zeros":
        raise ValueError(f"{conv_like}: Winograd needs zero padding, got padding_mode={padding_mode!r}")
    if kernel_size[0] != kernel_size[1]:
        raise ValueError(f"{conv_like}: Winograd needs a square kernel, got {tuple(kernel_size)}")
    if kernel_size[0] < 2:
        raise ValueError(f"{conv_like}: a {kernel_size[0]}x{kernel_size[0]} kernel has nothing to "
                         "save with Winograd (kernel_size must be >= 2)")


def check_tile(m, what: str = "output tile m") -> int:
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"{what} must be an integer >= 1 (an output tile size), got {m!r}")
    return m


class WinogradConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose forward is Winograd F(m x m, r x r).

    Same parameters (``weight``, ``bias``), same ``state_dict``, same result up to
    floating-point rounding (see ``docs/winograd.md`` for the error per tile size). Any
    zero padding, batch, channel count and input size (the last tiles are padded and the
    output cropped). ``m`` is the output tile; ``None`` picks it per input shape with the
    cost model of :mod:`penjing.winograd_conv.autotune`.

    The transformed filter ``U = G g G^T`` is cached and recomputed whenever the weight
    changes (its version counter or storage moves, as after an optimizer step or
    ``load_state_dict``). While autograd needs the weight's gradient it is recomputed every
    call, so gradients flow through it.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None, m: int | None = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, device=device, dtype=dtype)
        _check_supported("WinogradConv2d", self.kernel_size, self.stride, self.dilation, self.groups,
                         self.padding_mode)
        self.m = None if m is None else check_tile(m)
        self._u_cache: dict[int, tuple[tuple, torch.Tensor]] = {}

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, m: int | None = None) -> WinogradConv2d:
        """A ``WinogradConv2d`` sharing ``conv``'s weight and bias (the same Parameters, so an
        optimizer or a parametrization set up on ``conv`` keeps working)."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"from_conv needs an nn.Conv2d, got {type(conv).__name__}")
        _check_supported(f"{type(conv).__name__}", conv.kernel_size, conv.stride, conv.dilation,
                         conv.groups, conv.padding_mode)
        if parametrize.is_parametrized(conv):
            raise ValueError("from_conv: the conv has parametrizations; bake them first "
                             "(penjing.bake) or convert before attaching them")
        # Built on the meta device (no allocation), then given the very same Parameters.
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, 1, conv.padding, 1, 1,
                  conv.bias is not None, "zeros", device="meta", m=m)
        new.weight = conv.weight
        new.bias = conv.bias
        new.train(conv.training)
        return new

    def extra_repr(self) -> str:
        return super().extra_repr() + f", m={'auto' if self.m is None else self.m}"

    # -- padding as (top, bottom, left, right) -------------------------------------------
    def padding4(self) -> Padding4:
        left, right, top, bottom = self._reversed_padding_repeated_twice
        return top, bottom, left, right

    # -- the transformed filter, cached ---------------------------------------------------
    def _weight_key(self, weight: torch.Tensor) -> tuple | None:
        if parametrize.is_parametrized(self, "weight"):
            return None  # recomputed on every access: a fresh tensor may reuse a freed address
        try:
            return (id(weight), weight.data_ptr(), weight._version, weight.dtype, weight.device,
                    tuple(weight.shape))
        except RuntimeError:  # inference tensors have no version counter
            return None

    def transformed_weight(self, m: int) -> torch.Tensor:
        """``U = G g G^T`` for F(m, r), laid out ``(alpha^2, C, K)``; cached when safe."""
        weight = self.weight
        if torch.is_grad_enabled() and weight.requires_grad:
            return filter_transform(weight, m)  # in the autograd graph: never cached
        key = self._weight_key(weight)
        cached = self._u_cache.get(m)
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            u = filter_transform(weight, m)
        if key is not None:
            self._u_cache = {m: (key, u)}  # keep one tile size: U is (alpha/r)^2 x the weight
        return u

    def tile_for(self, x: torch.Tensor) -> int:
        """The output tile used for input ``x``: ``self.m``, or the cost model's choice."""
        if self.m is not None:
            return self.m
        from penjing.winograd_conv.autotune import choose_tile_by_cost

        ho, wo = output_size(x.shape[-2], x.shape[-1], self.kernel_size[0], self.padding4())
        if ho < 1 or wo < 1:
            return 2  # any tile: winograd_conv2d reports the too-small input
        return choose_tile_by_cost(self.in_channels, self.out_channels, ho, wo, self.kernel_size[0],
                                   batch=x.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # nn.Conv2d accepts unbatched (C, H, W) input
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"WinogradConv2d expects (N, {self.in_channels}, H, W) input, "
                             f"got {tuple(x.shape)}")
        if not x.is_floating_point():
            return F.conv2d(x, self.weight, self.bias, 1, self.padding)  # let conv2d raise
        m = self.tile_for(x)
        return winograd_conv2d(x, self.transformed_weight(m), self.kernel_size[0], m,
                               self.padding4(), self.bias)
