"""Encode/decode throughput of the .pjz codec on a 4096x4096 layer at 90% sparsity.

The layer is pruned by magnitude to 10% and shared to 32 centroids (5 bits, Deep Compression's
fc setting) before timing. Baselines measured in the same run: ``torch.save``/``torch.load`` of
the dense float32 tensor and ``zlib`` (level 6) of its bytes. MB/s count the dense float32
megabytes (64 MiB = 67.1 MB) per second of encoding or decoding, so rows compare directly.

    python benchmarks/codec.py
"""

from __future__ import annotations

import io
import time
import zlib

import numpy as np
import torch
from torch import nn

from penjing.codec import decode_tensor, encode_tensor
from penjing.codec.dtypes import to_bits
from penjing.sharing import share_layer


def best_of(fn, repeat: int = 3):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(4096, 4096, bias=False)
    with torch.no_grad():
        w = layer.weight
        w[w.abs() < w.abs().flatten().kthvalue(int(0.9 * w.numel())).values] = 0
    t_share, _ = best_of(lambda: share_layer(_fresh(layer), 5), repeat=1)
    p = share_layer(layer, 5)  # empty clusters relocated: all 32 centroids in use
    weight = layer.weight.detach().clone()
    mb = weight.numel() * 4 / 1e6
    rows = []

    def torch_save():
        buf = io.BytesIO()
        torch.save(weight, buf)
        return buf.getvalue()

    t_enc, blob = best_of(torch_save)
    t_dec, _ = best_of(lambda: torch.load(io.BytesIO(blob), weights_only=True))
    rows.append(("torch.save / torch.load (dense fp32)", len(blob), t_enc, t_dec))
    raw = weight.numpy().tobytes()
    t_enc, z = best_of(lambda: zlib.compress(raw, 6), repeat=1)
    t_dec, _ = best_of(lambda: zlib.decompress(z), repeat=1)
    rows.append(("zlib level 6 of the fp32 bytes", len(z), t_enc, t_dec))
    hint = p.codec_hint()
    for huffman in (False, True):
        t_enc, enc = best_of(lambda h=huffman: encode_tensor(weight, hint=hint, huffman=h))
        t_dec, (out, _) = best_of(lambda e=enc: decode_tensor(e.codec, e.payload, weight.dtype, tuple(weight.shape), "w"))
        assert np.array_equal(to_bits(out), to_bits(weight))
        rows.append((f"penjing {enc.name}, {'Huffman' if huffman else 'packed'}", len(enc.payload), t_enc, t_dec))
    base_enc, base_dec = rows[0][2], rows[0][3]
    used = weight[weight != 0].unique().numel()
    print(f"4096x4096 float32 layer, {100 * float((weight == 0).float().mean()):.1f}% zeros, 5-bit sharing "
          f"({used} distinct nonzero values) "
          f"(k-means of the 1.68M nonzeros took {t_share:.2f} s)\n")
    print("| encoding | bytes | ratio vs fp32 | encode MB/s | decode MB/s | encode time vs torch.save | decode time vs torch.load |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, size, te, td in rows:
        print(f"| {name} | {size:,} | {mb * 1e6 / size:.1f}x | {mb / te:.0f} | {mb / td:.0f} | "
              f"{te / base_enc:.1f}x | {td / base_dec:.1f}x |")


def _fresh(layer: nn.Linear) -> nn.Linear:
    fresh = nn.Linear(4096, 4096, bias=False)
    with torch.no_grad():
        fresh.weight.copy_(layer.weight)
    return fresh


if __name__ == "__main__":
    main()
