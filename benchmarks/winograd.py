"""Winograd convolution vs PyTorch's own conv2d on this CPU, and its float32 error.

Run: ``python benchmarks/winograd.py`` (a few minutes; ``--quick`` for a smoke run).

Speed: 3x3 stride-1 layers of VGG/ResNet shapes (C = K = 64 at 56x56, 128 at 28x28, 256 at
14x14, 512 at 7x7), batch 1 and 32, 1 and 2 threads. Every rep runs ``F.conv2d`` and each
F(m) back to back (interleaved), so load from other processes hits all alike; the table
shows medians and the ratio ``time(F.conv2d) / time(F(m))`` (> 1: Winograd faster). The
filter transform is cached by ``WinogradConv2d`` in inference, so it is not timed; the input
is NCHW for both. "auto" is the tile the cost model picks among F(2), F(4) (no measurement).

Accuracy (Lavin & Gray 2016, Table 4's comparison): max |error| of float32 direct conv and of
F(2x2), F(4x4), F(6x6) against a float64 direct reference of the same float32 inputs, on
(a) every stride-1 3x3 conv of the SmallResNet trained on digits, fed its real activations
on the digits test set, and (b) a 64-channel 56x56 layer with He-initialised weights and
ReLU inputs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from _machine import cpu_name  # benchmarks/ is on sys.path when a script runs
from torch import nn

from penjing.winograd_conv import WinogradConv2d, choose_tile_by_cost

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]
TILES = (2, 4, 6)



@torch.no_grad()
def speed(threads: int, batch: int, channels: int, size: int, reps: int) -> dict:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2 / (9 * channels)) ** 0.5)
    x = torch.randn(batch, channels, size, size, generator=gen).relu()
    runs = {"direct": lambda: F.conv2d(x, conv.weight, None, 1, 1)}
    for m in TILES:
        layer = WinogradConv2d.from_conv(conv, m).eval()
        runs[m] = layer
    for fn in runs.values():  # warm-up; also fills each layer's filter-transform cache
        fn(x) if isinstance(fn, nn.Module) else fn()
    samples = {key: [] for key in runs}
    for _ in range(reps):
        for key, fn in runs.items():
            start = time.perf_counter()
            fn(x) if isinstance(fn, nn.Module) else fn()
            samples[key].append(time.perf_counter() - start)
    med = {key: statistics.median(v) for key, v in samples.items()}
    auto = choose_tile_by_cost(channels, channels, size, size, 3, batch)
    return {"med": med, "auto": auto}


def reps_for(batch: int, quick: bool) -> int:
    if quick:
        return 2
    return 5 if batch >= 32 else 15


def speed_table(quick: bool) -> list[str]:
    lines = ["| threads | batch | layer | F.conv2d ms | F(2) ms | F(4) ms | F(6) ms | ratio F(2) "
             "| ratio F(4) | ratio F(6) | best | auto (cost model) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    shapes = SHAPES[:2] if quick else SHAPES
    for threads in (1, 2):
        for batch in (1, 32):
            for channels, size in shapes:
                b = 2 if quick and batch == 32 else batch
                res = speed(threads, b, channels, size, reps_for(b, quick))
                med, direct = res["med"], res["med"]["direct"]
                ratios = {m: direct / med[m] for m in TILES}
                best = max(TILES, key=lambda m: ratios[m])
                verdict = f"F({best}) {ratios[best]:.2f}x" + ("" if ratios[best] > 1 else " (slower)")
                auto = res["auto"]
                row = (f"| {threads} | {b} | {channels}@{size}x{size} | {1e3 * direct:.2f} | "
                       + " | ".join(f"{1e3 * med[m]:.2f}" for m in TILES) + " | "
                       + " | ".join(f"{ratios[m]:.2f}x" for m in TILES)
                       + f" | {verdict} | F({auto}) {ratios[auto]:.2f}x |")
                print(row, flush=True)
                lines.append(row)
    return lines


@torch.no_grad()
def _errors(x: torch.Tensor, w: torch.Tensor, padding: int) -> dict[str, float]:
    ref = F.conv2d(x.double(), w.double(), padding=padding)
    out = {"direct": (F.conv2d(x, w, padding=padding).double() - ref).abs().max().item()}
    conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], padding=padding, bias=False)
    conv.weight.copy_(w)
    for m in TILES:
        out[f"F({m}x{m})"] = (WinogradConv2d.from_conv(conv, m)(x).double() - ref).abs().max().item()
    out["max |ref|"] = ref.abs().max().item()
    return out


@torch.no_grad()
def accuracy_table() -> list[str]:
    from penjing.data import digits
    from penjing.models import pretrained

    torch.set_num_threads(2)
    train, test = digits()
    model = pretrained("resnet", train, progress=False)
    inputs: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3) and module.stride == (1, 1):
            hooks.append(module.register_forward_pre_hook(
                lambda mod, args, name=name: inputs.setdefault(name, args[0].detach())))
    model(test.tensors[0])
    for h in hooks:
        h.remove()
    cols = ["direct", "F(2x2)", "F(4x4)", "F(6x6)"]
    lines = ["| layer | input | max abs ref | " + " | ".join(f"{c} max err" for c in cols)
             + " | F(4x4)/F(2x2) |", "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    cases = [(f"SmallResNet (digits) {name}", inputs[name], model.get_submodule(name).weight, 1)
             for name in inputs]
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 64, 3, 3, generator=gen) * (2 / (9 * 64)) ** 0.5
    x = torch.randn(8, 64, 56, 56, generator=gen).relu()
    cases.append(("64@56x56, He weights, ReLU inputs", x, w, 1))
    for title, x, w, pad in cases:
        e = _errors(x, w, pad)
        row = (f"| {title} | {'x'.join(map(str, x.shape))} | {e['max |ref|']:.2f} | "
               + " | ".join(f"{e[c]:.2e}" for c in cols) + f" | {e['F(4x4)'] / e['F(2x2)']:.1f}x |")
        print(row, flush=True)
        lines.append(row)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few reps, small batch")
    parser.add_argument("--out", help="also write the Markdown result here")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.perf_counter()
    head = ["# Winograd convolution benchmark\n",
            f"- command: `python benchmarks/winograd.py{' --quick' if args.quick else ''}`",
            f"- date: {started}; machine: {cpu_name()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads available; other processes were running "
            f"(load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)\n",
            "## Float32 error vs a float64 direct reference (Lavin & Gray Table 4's comparison)\n"]
    print("\n".join(head), flush=True)
    acc = accuracy_table()
    mid = ["\n## Speed: ratio = time(F.conv2d) / time(F(m)), > 1 is faster (medians, interleaved)\n"]
    print("\n".join(mid), flush=True)
    spd = speed_table(args.quick)
    tail = [f"\ntotal benchmark time {time.perf_counter() - t0:.0f} s; load average at the end "
            f"{os.getloadavg()[0]:.1f}"]
    print(tail[0])
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(head + acc + mid + spd + tail) + "\n")


if __name__ == "__main__":
    main()
