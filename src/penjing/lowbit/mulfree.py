"""A multiplication-free ternary Linear: ``y = Wp * sum(x over +1) - Wn * sum(x over -1)``.

With ternary weights a dot product needs no multiplications: gather the inputs at the
``+1`` positions of each row and add them, do the same for ``-1``, and apply the two scales
once per output (2 multiplications per output instead of ``in_features``). This module does
exactly that with index gathers and ``index_add_`` (additions only).

Whether that is *faster* is a hardware question: on a CPU with a tuned BLAS the dense
matmul wins by a wide margin (see ``benchmarks/results/lowbit.md``); the saving this path
shows is in operations (and in energy on hardware built for it), not in CPU wall time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from penjing.core import structure
from penjing.core.params import parametrizations
from penjing.core.select import select, swap
from penjing.lowbit.api import latent
from penjing.lowbit.ternary import TTQWeight, TWNWeight, decode_ternary


class TernaryLinear(nn.Module):
    """Inference-only Linear layer with ternary weights, computed with additions only.

    Build it with :meth:`from_codes` or :meth:`from_linear` (a Linear carrying a TTQ/TWN
    parametrization). Buffers: row/column indices of the ``+1`` and ``-1`` weights, the
    scales ``wp``, ``wn`` and the bias.
    """

    def __init__(self, in_features: int, out_features: int, pos: Tensor, neg: Tensor,
                 wp: Tensor, wn: Tensor, bias: Tensor | None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("pos_rows", pos[:, 0].contiguous())
        self.register_buffer("pos_cols", pos[:, 1].contiguous())
        self.register_buffer("neg_rows", neg[:, 0].contiguous())
        self.register_buffer("neg_cols", neg[:, 1].contiguous())
        self.register_buffer("wp", wp.detach().reshape(()).clone())
        self.register_buffer("wn", wn.detach().reshape(()).clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_codes(cls, codes: Tensor, wp: Tensor, wn: Tensor, bias: Tensor | None = None) -> TernaryLinear:
        """From a ``(out, in)`` tensor of codes in ``{-1, 0, +1}`` and the two scales."""
        if codes.dim() != 2:
            raise ValueError(f"ternary Linear codes must be 2-D (out, in), got shape {tuple(codes.shape)}")
        if (codes.abs() > 1).any():
            raise ValueError("ternary codes must be in {-1, 0, +1}")
        out_features, in_features = codes.shape
        return cls(in_features, out_features, (codes > 0).nonzero(), (codes < 0).nonzero(),
                   torch.as_tensor(wp), torch.as_tensor(wn), bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> TernaryLinear:
        """From a Linear whose weight carries a TTQ or TWN parametrization (the last one)."""
        ps = parametrizations(linear)
        if not isinstance(linear, nn.Linear) or not ps or not isinstance(ps[-1], (TTQWeight, TWNWeight)):
            raise ValueError("TernaryLinear.from_linear needs an nn.Linear ternarized with TTQ or TWN")
        state = ps[-1].encode(latent(linear, ps[-1]))
        return cls.from_codes(state["codes"], state["wp"], state["wn"], linear.bias)

    def dense_weight(self) -> Tensor:
        """The equivalent dense weight ``{-Wn, 0, Wp}`` (for checking and export)."""
        codes = torch.zeros(self.out_features, self.in_features, dtype=torch.int8, device=self.wp.device)
        codes[self.pos_rows, self.pos_cols] = 1
        codes[self.neg_rows, self.neg_cols] = -1
        return decode_ternary(codes, self.wp, self.wn, self.wp.dtype)

    def _row_sums(self, xt: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        # xt is (in, N): each gathered input is a contiguous row of N values, and index_add_
        # adds whole rows into the outputs, which is ~3x faster on CPU than scattering
        # single values along dim 1 of an (N, in) input.
        out = xt.new_zeros(self.out_features, xt.shape[1])
        return out.index_add_(0, rows, xt.index_select(0, cols))  # additions only

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        xt = x.reshape(-1, self.in_features).t().contiguous()
        y = (self.wp * self._row_sums(xt, self.pos_rows, self.pos_cols)
             - self.wn * self._row_sums(xt, self.neg_rows, self.neg_cols)).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        n = self.in_features * self.out_features
        nz = self.pos_rows.numel() + self.neg_rows.numel()
        return f"in_features={self.in_features}, out_features={self.out_features}, nonzero={nz}/{n}"


def to_multiplication_free(model: nn.Module) -> nn.Module:
    """Swap every ternarized ``nn.Linear`` of ``model`` for a :class:`TernaryLinear` (in place).
    Other layers are untouched; returns ``model``."""
    swapped = []
    for name, module in list(select(model, nn.Linear)):
        ps = parametrizations(module)
        if ps and isinstance(ps[-1], (TTQWeight, TWNWeight)):
            swap(model, name, TernaryLinear.from_linear(module))
            swapped.append({"name": name, "shape": [module.out_features, module.in_features]})
    if not swapped:
        raise ValueError("no ternarized Linear layer to make multiplication-free; ternarize first")
    structure.note(model, "ternary_linear", swapped)
    return model


def dense_reference(layer: TernaryLinear, x: Tensor) -> Tensor:
    """The same layer as a dense matmul (what :class:`TernaryLinear` must equal)."""
    return F.linear(x, layer.dense_weight(), layer.bias)
