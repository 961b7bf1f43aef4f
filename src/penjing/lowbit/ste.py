"""Straight-through estimators: the forward rounds to a few values, the backward does not.

Every function here is a :class:`torch.autograd.Function` whose backward is written out by
hand, because each paper specifies its own gradient rule:

* :func:`sign_ste` -- BinaryConnect / BNN (Courbariaux et al. 2015, 2016): ``sign`` forward,
  gradient passed where ``|x| <= 1`` and blocked outside (the derivative of ``hardtanh``).
* :func:`stochastic_sign_ste` -- BinaryConnect's stochastic variant: ``+1`` with probability
  ``hard_sigmoid(x) = clip((x + 1) / 2, 0, 1)``; same backward.
* :func:`ttq_ternarize` -- Trained Ternary Quantization (Zhu, Han, Mao, Dally 2017), whose
  backward gives the scales the sums of the gradients over their index sets and scales the
  latent weights' gradients by ``Wp`` / ``1`` / ``Wn`` per region (eqs. 7 and 8).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function


def _pm1(positive: Tensor, like: Tensor) -> Tensor:
    """``+1`` where ``positive`` else ``-1``, in ``like``'s dtype (exact values, no arithmetic
    on the latent tensor, so the result is bit-identical whatever the latent values are)."""
    one = torch.ones((), dtype=like.dtype, device=like.device)
    return torch.where(positive, one, -one)


class _SignSTE(Function):
    @staticmethod
    def forward(ctx, x: Tensor, zero_is_positive: bool) -> Tensor:
        ctx.save_for_backward(x)
        return _pm1(x >= 0 if zero_is_positive else x > 0, x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        # hardtanh' : pass where |x| <= 1, block outside (BinaryConnect's clip region)
        return grad * (x.abs() <= 1).to(grad.dtype), None


class _StochasticSignSTE(Function):
    @staticmethod
    def forward(ctx, x: Tensor, generator: torch.Generator | None) -> Tensor:
        ctx.save_for_backward(x)
        p = ((x + 1) / 2).clamp(0, 1)  # hard sigmoid: P(+1)
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return _pm1(u < p, x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype), None


def sign_ste(x: Tensor, zero_is_positive: bool = True) -> Tensor:
    """``+1`` / ``-1`` forward, straight-through (``|x| <= 1``) backward.

    Weights use ``zero_is_positive=True`` (``w >= 0 -> +1``: every weight is exactly one of
    two values). Activations use ``False`` (``x > 0 -> +1``): after a ReLU a zero must map to
    ``-1``, otherwise every binarized activation would be ``+1`` and carry nothing.
    """
    return _SignSTE.apply(x, zero_is_positive)


def stochastic_sign_ste(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """BinaryConnect's stochastic binarization: ``+1`` with probability ``clip((x+1)/2, 0, 1)``."""
    return _StochasticSignSTE.apply(x, generator)


class _TTQ(Function):
    @staticmethod
    def forward(ctx, v: Tensor, wp: Tensor, wn: Tensor, delta: Tensor) -> Tensor:
        pos, neg = v > delta, v < -delta
        ctx.save_for_backward(pos, neg, wp, wn)
        zero = torch.zeros((), dtype=v.dtype, device=v.device)
        return torch.where(pos, wp, torch.where(neg, -wn, zero))

    @staticmethod
    def backward(ctx, grad: Tensor):
        pos, neg, wp, wn = ctx.saved_tensors
        one = torch.ones((), dtype=grad.dtype, device=grad.device)
        # eq. 8: the latent gradient is scaled by Wp on I_p, 1 on I_z, Wn on I_n
        grad_v = grad * torch.where(pos, wp.detach(), torch.where(neg, wn.detach(), one))
        # eq. 7: dL/dWp = sum of dL/dw_t over I_p. Wn enters the forward as -Wn (Wn > 0 is the
        # magnitude of the negative value), so the chain rule gives dL/dWn = -sum over I_n;
        # the paper prints the sum without the sign, its reference code has it through autograd.
        grad_wp = grad[pos].sum().reshape(wp.shape)
        grad_wn = -grad[neg].sum().reshape(wn.shape)
        return grad_v, grad_wp, grad_wn, None


def ttq_ternarize(v: Tensor, wp: Tensor, wn: Tensor, delta: Tensor) -> Tensor:
    """TTQ forward ``Wp * [v > delta] - Wn * [v < -delta]`` with the paper's gradients."""
    return _TTQ.apply(v, wp, wn, delta)


def ternary_codes(v: Tensor, delta: Tensor | float) -> Tensor:
    """The ternary code of every weight: ``int8`` in ``{-1, 0, +1}`` (``|v| <= delta -> 0``)."""
    return (v > delta).to(torch.int8) - (v < -delta).to(torch.int8)


class _StraightThrough(Function):
    @staticmethod
    def forward(ctx, v: Tensor, q: Tensor) -> Tensor:
        return q.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def straight_through(v: Tensor, q: Tensor) -> Tensor:
    """Forward ``q`` exactly, backward the gradient to ``v`` unchanged.

    (``v + (q - v).detach()`` is the usual idiom, but it is not bit-exact: ``v + (q - v)``
    rounds, and stored weights must decode to exactly what the model computed with.)
    """
    return _StraightThrough.apply(v, q)
