"""A user's own model with the layers real models have: a learned position embedding,
a depthwise convolution with a residual, nn.MultiheadAttention, LayerNorm and an MLP.

It reads the bundled 8x8 digits as 8 tokens (rows) of 8 pixels, so every penjing command
runs on it with real accuracy:

    penjing train --model examples/attention_net.py:AttentionNet --epochs 30 --out out/attn
    penjing compress --model examples/attention_net.py:AttentionNet \\
        --weights out/attn/model.safetensors --input-shape 64 --out out/attn-dc
"""

from __future__ import annotations

import torch
from torch import nn


class AttentionNet(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, classes: int = 10):
        super().__init__()
        self.embed = nn.Linear(8, dim)                   # a row of 8 pixels -> a token
        self.position = nn.Embedding(8, dim)             # learned positions of the 8 rows
        self.depthwise = nn.Conv1d(dim, dim, 3, padding=1, groups=dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(x.shape[0], 8, 8)
        h = self.embed(tokens) + self.position(torch.arange(8, device=x.device))
        h = h + self.depthwise(h.transpose(1, 2)).transpose(1, 2)
        a, _ = self.attn(h, h, h, need_weights=False)
        h = self.norm1(h + a)
        h = self.norm2(h + self.mlp(h))
        return self.head(h.mean(1))
