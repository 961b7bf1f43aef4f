"""What the trace does not record and SCALE-Sim's memory model needs: conv geometry and the
zero pattern of each weight, read from the model's own modules with forward hooks.

The tracer (:mod:`penjing.hw.trace`) gives each GEMM layer its ``M x K x N`` view, sparsity
count and bit widths. For the ifmap's DRAM traffic the memory model needs which input pixels
overlapping windows share (the ifmap height/width, kernel and stride), and for zero-skipping
it needs the *pattern* of zeros, not their count: how many nonzeros the densest filter
(column of the ``K x N`` weight) has, and whether the weight is N:M structured.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from penjing.hw.scalesim_io import ConvShape


@dataclass
class LayerGeometry:
    """One conv/linear module: its SCALE-Sim shape (padding folded in) and its zero pattern."""

    shape: ConvShape | None  # None for a linear layer (a plain GEMM)
    max_column_nonzeros: int  # nonzeros of the densest filter / output row of the weight
    nm: tuple[int, int] | None  # (N, M) when every group of M consecutive weights has <= N nonzeros


def nm_pattern(weight: torch.Tensor, candidates=((1, 2), (2, 4), (1, 4), (4, 8), (2, 8))) -> tuple[int, int] | None:
    """The tightest N:M pattern the weight obeys along its input dimension (groups of ``M``
    consecutive weights of one output along ``K``), or ``None``. A conv weight is read in
    SCALE-Sim's ``K`` order, ``(r, s, c)`` with the input channel innermost, so its groups run
    along input channels (the layout of N:M sparse tensor cores)."""
    w = weight.detach()
    if w.dim() > 2:
        w = w.movedim(1, -1)
    w = w.reshape(w.shape[0], -1)
    best = None
    for n, m in candidates:
        if w.shape[1] % m:
            continue
        nz = (w.reshape(w.shape[0], -1, m) != 0).sum(-1)
        if int(nz.max()) <= n and (best is None or n / m < best[0] / best[1]):
            best = (n, m)
    return best


def geometry(model: nn.Module, example) -> dict[str, LayerGeometry]:
    """Conv2d and Linear modules of ``model`` by name, seen on one forward pass of ``example``."""
    found: dict[str, LayerGeometry] = {}
    hooks = []

    def hook_for(name):
        def hook(module, inputs, output):
            x = inputs[0]
            w = module.weight
            nonzeros = int((w.detach().reshape(w.shape[0], -1) != 0).sum(1).max())
            shape = None
            if isinstance(module, nn.Conv2d) and x.dim() == 4 and module.groups == 1 \
                    and module.dilation == (1, 1) and isinstance(module.padding, tuple):
                (ph, pw), (sh, sw) = module.padding, module.stride
                R, S = module.kernel_size
                Eh, Ew = output.shape[-2], output.shape[-1]
                # the input torch really reads: padded, cropped to (E - 1) * s + R so that
                # SCALE-Sim's ceil size equals torch's output size
                H = min(x.shape[-2] + 2 * ph, (Eh - 1) * sh + R)
                W = min(x.shape[-1] + 2 * pw, (Ew - 1) * sw + S)
                shape = ConvShape(name or "conv", H, W, R, S, module.in_channels, module.out_channels, sh, sw)
            found[name] = LayerGeometry(shape=shape, max_column_nonzeros=nonzeros, nm=nm_pattern(w))
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and isinstance(getattr(module, "weight", None), torch.Tensor):
            hooks.append(module.register_forward_hook(hook_for(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*example) if isinstance(example, tuple) else model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return found
