"""The weight-sharing parametrization ``W = C[I]``.

``C`` (the codebook, ``2^b`` centroids) is the trainable parameter; ``I`` (one index per
weight) is a fixed buffer. Index 0 is reserved for "this weight is zero": pruned weights are
not clustered and stay exactly zero, and their gradient is dropped. Because the forward is a
plain gather, autograd gives each centroid the *sum* of its members' gradients -- the
centroid fine-tuning rule of Deep Compression (Han et al. 2016, Fig. 3) -- with no custom
backward.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SharedWeight(nn.Module):
    """Parametrization ``W = cat([0], centroids)[index]`` (the input tensor is not used).

    ``bits`` (bits per stored weight, read by the accounting) is ``b`` for ``2^b`` centroids.
    """

    def __init__(self, centroids: Tensor, index: Tensor, bits: int):
        super().__init__()
        if centroids.dim() != 1:
            raise ValueError(f"centroids must be 1-D, got shape {tuple(centroids.shape)}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) > centroids.numel()):
            raise ValueError(f"indices must lie in [0, {centroids.numel()}] (0 = zero weight)")
        self.bits = int(bits)
        self.centroids = nn.Parameter(centroids.detach().clone())
        # uint8 holds up to 255 centroids plus the zero slot; int32 anything larger.
        dtype = torch.uint8 if centroids.numel() < 256 else torch.int32
        self.register_buffer("index", index.to(dtype))

    def table(self) -> Tensor:
        """The lookup table ``[0, c_1, ..., c_k]``."""
        return torch.cat([self.centroids.new_zeros(1), self.centroids])

    def forward(self, _: Tensor) -> Tensor:
        return self.table()[self.index.long()]

    def codec_hint(self, v: Tensor | None = None) -> dict:
        """Tell :func:`penjing.codec.save` to store a codebook and ``bits``-bit indices."""
        return {"codebook_bits": self.bits}

    def extra_repr(self) -> str:
        return f"bits={self.bits}, centroids={self.centroids.numel()}, shape={tuple(self.index.shape)}"
