"""Encode/decode throughput of the .pjz codec on a 4096x4096 layer at 90% sparsity.

The layer is pruned by magnitude to 10% and shared to 32 centroids (5 bits, Deep Compression's
fc setting) before timing. Baselines measured in the same process: ``torch.save``/``torch.load``
of the dense float32 tensor and ``zlib`` (level 6) of its bytes. Every variant is timed once
per round, the rounds interleaved (so load on a shared machine hits all of them alike); the
table gives medians with the min-max range, MB/s counting the dense float32 megabytes (64 MiB
= 67.1 MB) per second, and the decode-throughput ratio against ``torch.load`` computed round by
round (median [min-max]): >= 1.00x means decoding is at least as fast as ``torch.load``.

    python benchmarks/codec.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_name  # noqa: E402

from penjing.codec import decode_tensor, encode_tensor  # noqa: E402
from penjing.codec.dtypes import to_bits  # noqa: E402
from penjing.sharing import share_layer  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    layer = nn.Linear(4096, 4096, bias=False)
    with torch.no_grad():
        w = layer.weight
        w[w.abs() < w.abs().flatten().kthvalue(int(0.9 * w.numel())).values] = 0
    p = share_layer(layer, 5)  # empty clusters relocated: all 32 centroids in use
    weight = layer.weight.detach().clone()
    mb = weight.numel() * 4 / 1e6
    hint = p.codec_hint()
    shape = tuple(weight.shape)
    raw = weight.numpy().tobytes()

    def torch_save():
        buf = io.BytesIO()
        torch.save(weight, buf)
        return buf.getvalue()

    blob = torch_save()
    z = zlib.compress(raw, 6)
    encoded = {h: encode_tensor(weight, hint=hint, huffman=h) for h in (False, True)}
    for enc in encoded.values():  # every decoder gives the weights back bit for bit
        out, _ = decode_tensor(enc.codec, enc.payload, weight.dtype, shape, "w")
        assert np.array_equal(to_bits(out), to_bits(weight))
    variants = {
        "torch.save / torch.load (dense fp32)": (torch_save, lambda: torch.load(io.BytesIO(blob), weights_only=True),
                                                 len(blob)),
        "zlib level 6 of the fp32 bytes": (lambda: zlib.compress(raw, 6), lambda: zlib.decompress(z), len(z)),
    }
    for h, enc in encoded.items():
        variants[f"penjing {enc.name}, {'Huffman' if h else 'packed'}"] = (
            lambda h=h: encode_tensor(weight, hint=hint, huffman=h),
            lambda e=enc: decode_tensor(e.codec, e.payload, weight.dtype, shape, "w"),
            len(enc.payload))
    times = {name: {"enc": [], "dec": []} for name in variants}
    for r in range(args.rounds):
        for name, (enc_fn, dec_fn, _) in variants.items():
            if r < 5 or not name.startswith("zlib"):  # zlib encode takes ~1 s: 5 rounds of it
                times[name]["enc"].append(timed(enc_fn)[0])
            times[name]["dec"].append(timed(dec_fn)[0])
    base = times["torch.save / torch.load (dense fp32)"]["dec"]
    print(f"Command: `python benchmarks/codec.py --rounds {args.rounds}`; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"CPU: {cpu_name()} ({os.cpu_count()} cores, shared), torch {torch.__version__}, numpy {np.__version__}, "
          f"1 thread; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after.\n")
    print(f"4096x4096 float32 layer, {100 * float((weight == 0).float().mean()):.1f}% zeros, 5-bit sharing "
          f"({weight[weight != 0].unique().numel()} distinct nonzero values); {args.rounds} interleaved rounds.\n")
    print("| encoding | bytes | ratio vs fp32 | encode MB/s (median) | decode MB/s (median) | decode ms median [min-max] "
          "| decode throughput vs torch.load, median [min-max] |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (_, _, size) in variants.items():
        enc, dec = times[name]["enc"], times[name]["dec"]
        ratios = [b / d for b, d in zip(base, dec, strict=True)]
        print(f"| {name} | {size:,} | {mb * 1e6 / size:.1f}x | {mb / statistics.median(enc):.0f} | "
              f"{mb / statistics.median(dec):.0f} | {1e3 * statistics.median(dec):.1f} [{1e3 * min(dec):.1f}-"
              f"{1e3 * max(dec):.1f}] | {statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}] |")


if __name__ == "__main__":
    main()
