"""The factorised layers that replace a Linear, a Conv2d or an Embedding.

Each is an ``nn.Sequential`` of plain ``nn.Linear`` / ``nn.Conv2d`` layers, so everything
else in penjing (summaries, quantization, the codec, a state_dict) sees ordinary layers. The
subclass only adds what the factorisation was (``rank``, ``method``) and
:meth:`dense_weight`, the equivalent single weight, used for the approximation error and
in the tests; it is also readable as ``.weight`` (computed on access, read-only), for code
that reads the replaced layer's ``weight.dtype`` or ``weight.shape``.

The constructors take shapes and ranks only (no weights), so a model can be rebuilt with
the same structure and then given a saved state_dict; ``from_module`` builds and fills one
from the layer it replaces.

Convolution geometry is kept exact: every factor that looks at neighbouring pixels gets the
original stride/padding/dilation *of its own spatial dimensions*, and 1x1 factors, which
commute with any padding (they have no bias), get none. The original bias goes on the last
factor. Padding modes (reflect, circular...) carry over for the same reason.
"""

from __future__ import annotations

import torch
from torch import nn

from penjing.low_rank import decompose


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _spatial_kwargs(conv: nn.Conv2d) -> dict:
    return {"stride": _pair(conv.stride), "padding": conv.padding if isinstance(conv.padding, str)
            else _pair(conv.padding), "dilation": _pair(conv.dilation), "padding_mode": conv.padding_mode}


def _axis(kwargs: dict, axis: int) -> dict:
    """The geometry restricted to one axis (0: height, 1: width): the other gets stride 1,
    dilation 1 and no padding. A string padding ('same'/'valid') applies per axis as is,
    because the factor's kernel is 1 along the other axis."""
    def keep(pair, neutral):
        return (pair[0], neutral) if axis == 0 else (neutral, pair[1])

    padding = kwargs["padding"]
    return {"stride": keep(kwargs["stride"], 1), "dilation": keep(kwargs["dilation"], 1),
            "padding": padding if isinstance(padding, str) else keep(padding, 0),
            "padding_mode": kwargs["padding_mode"]}


def _fill(new: nn.Sequential, original: nn.Module, factors: tuple[torch.Tensor, ...]):
    """Move ``new`` to the original's device/dtype, then copy the factors and the bias in."""
    weight = original.weight
    new.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        for layer, factor in zip(new, factors, strict=True):
            layer.weight.copy_(factor)
        if original.bias is not None:
            new[-1].bias.copy_(original.bias.detach())
    return new


class _DenseWeight:
    """A read-only ``weight``: code written for the layer that was replaced (HF's ViT reads
    ``projection.weight.dtype``; others read ``.weight.device`` or ``.weight.shape``) keeps
    working. It is the dense product of the factors, computed on every access (so it costs a
    matrix product, is never stored, and is not a Parameter: the state_dict, the optimiser and
    penjing's layer rules see only the factors). Assigning to it is refused."""

    @property
    def weight(self) -> torch.Tensor:
        """The equivalent single weight (:meth:`dense_weight`), computed on access."""
        return self.dense_weight()


class LowRankLinear(_DenseWeight, nn.Sequential):
    """``Linear(in, out)`` as ``Linear(in, rank, bias=False) -> Linear(rank, out)``."""

    method = "svd"

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__(nn.Linear(in_features, rank, bias=False), nn.Linear(rank, out_features, bias=bias))
        self.rank = rank

    @classmethod
    def from_module(cls, linear: nn.Linear, rank: int) -> LowRankLinear:
        new = cls(linear.in_features, linear.out_features, rank, linear.bias is not None)
        return _fill(new, linear, decompose.linear_factors(linear.weight, rank))

    def dense_weight(self) -> torch.Tensor:
        return self[1].weight @ self[0].weight


class LowRankEmbedding(_DenseWeight, nn.Sequential):
    """``Embedding(entries, dim)`` as ``Embedding(entries, rank) -> Linear(rank, dim, bias=False)``:
    the table ``E = A B`` (a lookup of ``A``'s row, then one ``rank x dim`` product per token).
    ``padding_idx`` and ``sparse`` carry over to the narrower table; ``max_norm`` cannot (it
    renormalises rows of ``E``, not of ``A``) and such tables are not factorised."""

    method = "embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int, rank: int,
                 padding_idx: int | None = None, scale_grad_by_freq: bool = False,
                 sparse: bool = False):
        super().__init__(nn.Embedding(num_embeddings, rank, padding_idx=padding_idx,
                                      scale_grad_by_freq=scale_grad_by_freq, sparse=sparse),
                         nn.Linear(rank, embedding_dim, bias=False))
        self.rank = rank

    @classmethod
    def from_module(cls, table: nn.Embedding, rank: int) -> LowRankEmbedding:
        new = cls(table.num_embeddings, table.embedding_dim, rank, table.padding_idx,
                  table.scale_grad_by_freq, table.sparse)
        weight = table.weight
        new.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            for layer, factor in zip(new, decompose.embedding_factors(weight, rank), strict=True):
                layer.weight.copy_(factor)
            # A zero row (the padding row) is in U's null space: make it exactly zero, not
            # rounding noise, so a padding token still embeds to 0.
            new[0].weight[(weight == 0).all(1)] = 0
        return new

    def dense_weight(self) -> torch.Tensor:
        return self[0].weight @ self[1].weight.t()


class ChannelSplitConv2d(_DenseWeight, nn.Sequential):
    """KxK conv ``C -> N`` as KxK conv ``C -> rank`` then 1x1 conv ``rank -> N`` (Zhang et al. 2015)."""

    method = "channel"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int, bias: bool = True,
                 **geometry):
        super().__init__(nn.Conv2d(in_channels, rank, kernel_size, bias=False, **geometry),
                         nn.Conv2d(rank, out_channels, 1, bias=bias))
        self.rank = rank

    @classmethod
    def from_module(cls, conv: nn.Conv2d, rank: int) -> ChannelSplitConv2d:
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, rank, conv.bias is not None,
                  **_spatial_kwargs(conv))
        return _fill(new, conv, decompose.channel_factors(conv.weight, rank))

    def dense_weight(self) -> torch.Tensor:
        return torch.einsum("nr,rchw->nchw", self[1].weight[:, :, 0, 0], self[0].weight)


class SpatialSplitConv2d(_DenseWeight, nn.Sequential):
    """Kh x Kw conv ``C -> N`` as Kh x 1 conv ``C -> rank`` then 1 x Kw conv ``rank -> N``
    (Jaderberg et al. 2014). Stride, padding and dilation are split per axis."""

    method = "spatial"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int, bias: bool = True,
                 **geometry):
        kh, kw = _pair(kernel_size)
        geometry = {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "padding_mode": "zeros",
                    **{k: (_pair(v) if k != "padding_mode" and not isinstance(v, str) else v)
                       for k, v in geometry.items()}}
        super().__init__(nn.Conv2d(in_channels, rank, (kh, 1), bias=False, **_axis(geometry, 0)),
                         nn.Conv2d(rank, out_channels, (1, kw), bias=bias, **_axis(geometry, 1)))
        self.rank = rank

    @classmethod
    def from_module(cls, conv: nn.Conv2d, rank: int) -> SpatialSplitConv2d:
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, rank, conv.bias is not None,
                  **_spatial_kwargs(conv))
        return _fill(new, conv, decompose.spatial_factors(conv.weight, rank))

    def dense_weight(self) -> torch.Tensor:
        return torch.einsum("nrj,rci->ncij", self[1].weight[:, :, 0, :], self[0].weight[:, :, :, 0])


class Tucker2Conv2d(_DenseWeight, nn.Sequential):
    """KxK conv ``C -> N`` as 1x1 ``C -> r_in``, KxK ``r_in -> r_out``, 1x1 ``r_out -> N``
    (Tucker-2, Kim et al. 2016). ``rank`` is ``(r_in, r_out)``."""

    method = "tucker"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: tuple[int, int],
                 bias: bool = True, **geometry):
        r_in, r_out = rank
        super().__init__(nn.Conv2d(in_channels, r_in, 1, bias=False),
                         nn.Conv2d(r_in, r_out, kernel_size, bias=False, **geometry),
                         nn.Conv2d(r_out, out_channels, 1, bias=bias))
        self.rank = (r_in, r_out)

    @classmethod
    def from_module(cls, conv: nn.Conv2d, rank: tuple[int, int], refine: bool = False) -> Tucker2Conv2d:
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, rank, conv.bias is not None,
                  **_spatial_kwargs(conv))
        return _fill(new, conv, decompose.tucker2_factors(conv.weight, *rank, refine=refine))

    def dense_weight(self) -> torch.Tensor:
        return torch.einsum("no,oihw,ic->nchw", self[2].weight[:, :, 0, 0], self[1].weight,
                            self[0].weight[:, :, 0, 0])


class CPConv2d(_DenseWeight, nn.Sequential):
    """KxK conv ``C -> N`` as a rank-R CP decomposition (Lebedev et al. 2015): 1x1 ``C -> R``,
    depthwise Kh x 1, depthwise 1 x Kw, 1x1 ``R -> N``. Needs tensorly to build from a conv."""

    method = "cp"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int, bias: bool = True,
                 **geometry):
        kh, kw = _pair(kernel_size)
        geometry = {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "padding_mode": "zeros",
                    **{k: (_pair(v) if k != "padding_mode" and not isinstance(v, str) else v)
                       for k, v in geometry.items()}}
        super().__init__(nn.Conv2d(in_channels, rank, 1, bias=False),
                         nn.Conv2d(rank, rank, (kh, 1), groups=rank, bias=False, **_axis(geometry, 0)),
                         nn.Conv2d(rank, rank, (1, kw), groups=rank, bias=False, **_axis(geometry, 1)),
                         nn.Conv2d(rank, out_channels, 1, bias=bias))
        self.rank = rank

    @classmethod
    def from_module(cls, conv: nn.Conv2d, rank: int) -> CPConv2d:
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, rank, conv.bias is not None,
                  **_spatial_kwargs(conv))
        return _fill(new, conv, decompose.cp_factors(conv.weight, rank))

    def dense_weight(self) -> torch.Tensor:
        return torch.einsum("nr,rc,ri,rj->ncij", self[3].weight[:, :, 0, 0], self[0].weight[:, :, 0, 0],
                            self[1].weight[:, 0, :, 0], self[2].weight[:, 0, 0, :])


#: conv method name -> factorised module class
CONV_METHODS: dict[str, type[nn.Sequential]] = {
    "channel": ChannelSplitConv2d,
    "spatial": SpatialSplitConv2d,
    "tucker": Tucker2Conv2d,
    "cp": CPConv2d,
}

FACTORISED_TYPES = (LowRankLinear, LowRankEmbedding, *CONV_METHODS.values())
