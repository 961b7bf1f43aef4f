"""Ternary weights as parametrizations: TWN (computed scale) and TTQ (learned scales).

* :class:`TWNWeight` -- Ternary Weight Networks (Li, Zhang, Liu 2016): threshold
  ``delta = 0.7 * mean|V|``, one scale ``alpha = mean(|V| over |V| > delta)``,
  ``W = alpha * {-1, 0, +1}``; plain straight-through backward to ``V``.
* :class:`TTQWeight` -- Trained Ternary Quantization (Zhu, Han, Mao, Dally 2017): threshold
  ``delta = t * max|V|`` (``t = 0.05``), two *learned* scales per layer,
  ``W = Wp * [V > delta] - Wn * [V < -delta]``, with the paper's gradients
  (see :func:`penjing.lowbit.ste.ttq_ternarize`).

Both expose :meth:`encode` (codes and scales) and a ``codec_hint``: :func:`penjing.save`
stores the baked weight as a 3-value codebook with 2-bit (or Huffman-coded) indices, and
:func:`penjing.load` gives the trained weights back bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from penjing.lowbit.ste import straight_through, ternary_codes, ttq_ternarize


def _mean_or_zero(total: Tensor, count: Tensor) -> Tensor:
    # An empty index set (e.g. an all-zero layer) gives 0, not 0/0 = NaN.
    return total / count.clamp(min=1)


class TWNWeight(nn.Module):
    """Parametrization ``W = alpha * ternary(V)`` with ``delta = factor * mean|V|``."""

    bits = 2

    def __init__(self, factor: float = 0.7):
        super().__init__()
        if not (factor > 0 and factor == factor and factor != float("inf")):
            raise ValueError(f"TWN threshold factor must be a positive number, got {factor}")
        self.factor = float(factor)

    def threshold(self, v: Tensor) -> Tensor:
        return self.factor * v.detach().abs().mean()

    def scale(self, v: Tensor, delta: Tensor) -> Tensor:
        """``alpha = mean(|V| over |V| > delta)``; 0 when no weight is above ``delta``."""
        a = v.detach().abs()
        above = a > delta
        return _mean_or_zero((a * above).sum(), above.sum())

    def forward(self, v: Tensor) -> Tensor:
        delta = self.threshold(v)
        codes = ternary_codes(v.detach(), delta)
        alpha = self.scale(v, delta)
        q = torch.where(codes != 0, alpha * codes.to(v.dtype), torch.zeros((), dtype=v.dtype))
        return straight_through(v, q)  # dW/dV = identity (TWN's straight-through rule)

    @torch.no_grad()
    def encode(self, v: Tensor) -> dict[str, Tensor]:
        """2-bit codes and ``Wp = Wn = alpha`` (float32), decoding to the forward exactly."""
        delta = self.threshold(v)
        alpha = self.scale(v, delta).to(torch.float32).reshape(1)
        return {"codes": ternary_codes(v, delta), "wp": alpha.clone(), "wn": alpha.clone()}

    def codec_hint(self, v: Tensor | None = None) -> dict:
        """Three values ``{-alpha, 0, alpha}``: a 2-bit codebook."""
        return {"codebook_bits": 2}

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class TTQWeight(nn.Module):
    """Parametrization ``W = Wp * [V > t max|V|] - Wn * [V < -t max|V|]``; ``Wp, Wn`` learned.

    ``Wp`` and ``Wn`` (positive magnitudes) start at the mean magnitude of the latent weights
    in their region, so the ternary layer starts close to the full-precision one (the paper
    normalises the weights to ``[-1, 1]`` and starts the scales at 1, which is the same up to
    the layer's overall scale; keeping the original units matters for nets without BatchNorm).
    """

    bits = 2

    def __init__(self, latent: Tensor, t: float = 0.05):
        super().__init__()
        if not (0.0 < t < 1.0):
            raise ValueError(f"TTQ threshold t must be in (0, 1), got {t}")
        self.t = float(t)
        with torch.no_grad():
            v = latent.detach().to(torch.float32)
            delta = self.t * v.abs().max() if v.numel() else torch.tensor(0.0)
            pos, neg = v > delta, v < -delta
            wp = _mean_or_zero((v * pos).sum(), pos.sum())
            wn = _mean_or_zero((-v * neg).sum(), neg.sum())
        self.wp = nn.Parameter(wp.reshape(()).to(latent.dtype))
        self.wn = nn.Parameter(wn.reshape(()).to(latent.dtype))

    def threshold(self, v: Tensor) -> Tensor:
        return self.t * v.detach().abs().max()

    def forward(self, v: Tensor) -> Tensor:
        return ttq_ternarize(v, self.wp, self.wn, self.threshold(v))

    @torch.no_grad()
    def encode(self, v: Tensor) -> dict[str, Tensor]:
        """2-bit codes and the learned ``Wp``, ``Wn`` (decode equals the forward exactly)."""
        return {"codes": ternary_codes(v, self.threshold(v)),
                "wp": self.wp.detach().to(torch.float32).reshape(1).clone(),
                "wn": self.wn.detach().to(torch.float32).reshape(1).clone()}

    def codec_hint(self, v: Tensor | None = None) -> dict:
        """Three values ``{-Wn, 0, Wp}``: a 2-bit codebook."""
        return {"codebook_bits": 2}

    def extra_repr(self) -> str:
        return f"t={self.t}"


def decode_ternary(codes: Tensor, wp: Tensor, wn: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Dense weights from codes in ``{-1, 0, +1}`` and the two scales (exact values)."""
    zero = torch.zeros((), dtype=dtype)
    wp, wn = wp.to(dtype).reshape(()), wn.to(dtype).reshape(())
    return torch.where(codes > 0, wp, torch.where(codes < 0, -wn, zero))
