"""Binary weights (BinaryConnect, XNOR scaling) and binary activations, as parametrizations.

``W = sign(V)`` (BinaryConnect, Courbariaux et al. 2015), optionally times a scale
``alpha = mean|V|`` per tensor or per output channel (XNOR-Net, Rastegari et al. 2016). The
latent real weights ``V`` are what the optimizer updates; BinaryConnect keeps them in
``[-1, 1]`` (beyond it a weight would drift forever, since its gradient is blocked there).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from penjing.lowbit.ste import sign_ste, stochastic_sign_ste

Scaling = Literal["none", "tensor", "channel"]
SCALINGS = ("none", "tensor", "channel")


def channel_dims(v: Tensor, out_axis: int = 0) -> tuple[int, ...]:
    """Every dim but the output-channel axis: the reduction for a per-channel statistic."""
    return tuple(d for d in range(v.dim()) if d != out_axis)


class BinaryWeight(nn.Module):
    """Parametrization ``W = alpha * sign(V)`` with a straight-through backward.

    ``scaling``: ``"none"`` (pure BinaryConnect, ``W`` in ``{-1, +1}``), ``"tensor"`` (one
    ``alpha = mean|V|``) or ``"channel"`` (XNOR: one ``alpha`` per output channel, the slices
    along ``out_axis``: dim 0 for Linear, ConvNd and Embedding rows, dim 1 for ConvTransposeNd,
    whose weight is ``(in, out, ...)``; see :func:`penjing.core.layers.weight_layout`). ``alpha`` is computed from ``V`` in every forward and
    differentiated through, as in XNOR-Net's gradient ``dC/dW (1/n + alpha * sign'(W))``.

    ``stochastic``: in training, ``+1`` with probability ``clip((V + 1) / 2, 0, 1)``; in eval
    the deterministic sign (the expected sign), so a trained model is deterministic.

    ``clip``: keep the latent weights in ``[-1, 1]``. The clip is applied lazily, at the start
    of the next forward after an optimizer step (in place on the latent parameter, without
    autograd), which is the same as clipping after each step but needs no hook in the loop.
    """

    bits = 1

    def __init__(self, scaling: Scaling = "channel", stochastic: bool = False, clip: bool = True,
                 out_axis: int = 0):
        super().__init__()
        if scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
        self.scaling = scaling
        self.out_axis = int(out_axis)
        self.stochastic = bool(stochastic)
        self.clip = bool(clip)
        self.generator: torch.Generator | None = None  # set for reproducible stochastic draws

    def _clipped(self, v: Tensor) -> Tensor:
        if not self.clip:
            return v
        with torch.no_grad():
            outside = bool((v.abs() > 1).any())
        if not outside:
            return v
        if v.is_leaf:
            with torch.no_grad():
                v.clamp_(-1.0, 1.0)  # the latent parameter itself (see the class docstring)
            return v
        # a parametrization below this one produced v: clip its output, straight-through
        return v + (v.clamp(-1.0, 1.0) - v).detach()

    def scale(self, v: Tensor) -> Tensor | None:
        """``alpha`` for latent ``v`` (``None`` when ``scaling="none"``); 0 for an all-zero slice."""
        if self.scaling == "none":
            return None
        if self.scaling == "tensor":
            return v.abs().mean()
        return v.abs().mean(dim=channel_dims(v, self.out_axis), keepdim=True)

    def forward(self, v: Tensor) -> Tensor:
        v = self._clipped(v)
        if self.stochastic and self.training and torch.is_grad_enabled():
            b = stochastic_sign_ste(v, self.generator)
        else:
            b = sign_ste(v, zero_is_positive=True)
        alpha = self.scale(v)
        return b if alpha is None else alpha * b

    @torch.no_grad()
    def encode(self, v: Tensor) -> dict[str, Tensor]:
        """One sign bit per weight (``True`` = ``+1``) and the scale(s), flat, as the eval-mode
        forward uses them."""
        v = v.clamp(-1.0, 1.0) if self.clip else v
        state = {"signs": v >= 0}
        alpha = self.scale(v)
        if alpha is not None:
            state["alpha"] = alpha.reshape(-1).to(torch.float32).clone()
        return state

    def codec_hint(self, v: Tensor | None = None) -> dict:
        """How the compressed file may store this weight (see :mod:`penjing.codec`).

        Per channel: an affine 1-bit code ``W = scale * (q - zero_point)`` with ``q`` in
        ``{0, 1}``, ``scale = 2 * alpha`` and ``zero_point = 0.5`` -- exact, since multiplying
        by 2 and by 0.5 is exact in floating point. Per tensor or unscaled: a 2-entry codebook.
        """
        if self.scaling != "channel":
            return {"codebook_bits": 1}
        if v is None:
            raise ValueError("a per-channel binary hint needs the latent weight to compute alpha")
        alpha = self.encode(v)["alpha"]
        if not bool((alpha > 0).all()):
            return {}  # an all-zero channel has no 1-bit affine form; the codec picks another
        return {"affine": {"bits": 1, "scale": 2 * alpha, "zero_point": torch.tensor(0.5),
                           "axis": self.out_axis}}

    def extra_repr(self) -> str:
        return (f"scaling={self.scaling}, stochastic={self.stochastic}, clip={self.clip}, "
                f"out_axis={self.out_axis}")


class BinaryInput:
    """Forward pre-hook that binarizes a layer's input (XNOR-Net's binary activations):
    ``x > 0 -> +1`` else ``-1`` forward, straight-through where ``|x| <= 1`` backward."""

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (sign_ste(args[0], zero_is_positive=False), *args[1:])


def has_binary_input(module: nn.Module) -> bool:
    return any(isinstance(h, BinaryInput) for h in module._forward_pre_hooks.values())


def binarize_input(module: nn.Module) -> None:
    """Make ``module`` see binarized inputs (idempotent)."""
    if not has_binary_input(module):
        module.register_forward_pre_hook(BinaryInput())
