"""Binary and ternary networks on the bundled digits: accuracy, sparsity, packed size, and
the multiplication-free ternary Linear against the dense matmul.

    python benchmarks/lowbit.py                 # LeNet-5 and SmallResNet, 20 epochs each
    python benchmarks/lowbit.py --epochs 3      # quick look

Every ratio is against a baseline measured in the same run: accuracy against the
full-precision model, sizes against the same tensors in float32, times against
``torch.nn.functional.linear`` on the same inputs.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from datetime import datetime, timezone

import torch
import torch.nn.functional as F
from _machine import cpu_name  # benchmarks/ is on sys.path when a script runs
from torch.utils import benchmark as tbench

import penjing as pj
from penjing.lowbit import (
    BinaryConfig,
    TernaryConfig,
    TernaryLinear,
    binarize,
    recalibrate_batchnorm,
    ternarize,
)
from penjing.lowbit.report import storage

METHODS = {
    "TTQ (t=0.05)": (2, lambda m: ternarize(m, TernaryConfig("ttq"))),
    "TWN (0.7 mean)": (2, lambda m: ternarize(m, TernaryConfig("twn"))),
    "BinaryConnect": (1, lambda m: binarize(m, BinaryConfig("binaryconnect"))),
    "BinaryConnect stochastic": (1, lambda m: binarize(m, BinaryConfig("binaryconnect", stochastic=True))),
    "XNOR (alpha per channel)": (1, lambda m: binarize(m, BinaryConfig("xnor"))),
}


LEGEND = """\
Columns: *acc. converted* is right after conversion, before any training; *zeros %* is the
fraction of zero ternary weights over the converted layers; *low-bit codes ratio* is float32
bytes / code bytes of the converted layers (2 or 1 bit per weight); *.pjz* is float32 bytes /
the converted layers' payload in the `.pjz` file (`pj.save`: codebook or 1-bit affine codes,
Huffman-coded where smaller, with their scales and tables); *whole model* is the whole
state_dict in float32 against every tensor's `.pjz` payload."""



def accuracy_table(models: list[str], epochs: int, lr: float, seed: int) -> list[str]:
    train, test = pj.data.digits()
    lines = ["| model | method | bits | acc. FP | acc. converted | acc. fine-tuned | vs FP (points) "
             "| zeros % | low-bit codes ratio | .pjz | whole model | train s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in models:
        fp = pj.models.pretrained(name, train, progress=False)
        fp_acc = pj.evaluate(fp, test)
        for method, (bits, convert) in METHODS.items():
            torch.manual_seed(seed)
            model = copy.deepcopy(fp)
            convert(model)
            converted = pj.evaluate(model, test)
            t0 = time.perf_counter()
            pj.fit(model, train, epochs=epochs, lr=lr, seed=seed, progress=False)
            if "stochastic" in method:  # BN statistics gathered under random signs: redo them
                recalibrate_batchnorm(model, train)
            seconds = time.perf_counter() - t0
            acc = pj.evaluate(model, test)
            size = storage(model)
            codes = sum(r.params for r in size.layers) * bits / 8
            codes_ratio = sum(r.fp32_bytes for r in size.layers) / codes
            zeros = ""
            if bits == 2:
                n = sum(r.params for r in size.layers)
                zeros = f"{100 * sum(r.zeros * r.params for r in size.layers) / n:.1f}"
            lines.append(
                f"| {name} | {method} | {bits} | {100 * fp_acc:.2f} | {100 * converted:.2f} | "
                f"{100 * acc:.2f} | {100 * (acc - fp_acc):+.2f} | {zeros} | {codes_ratio:.1f}x | "
                f"{size.lowbit_ratio:.1f}x | {size.ratio:.1f}x | {seconds:.0f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    return lines


def timing_table(seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    lines = ["| in x out | batch | zeros % | dense F.linear (us) | multiplication-free (us) "
             "| time ratio (mul-free / dense) | multiplies dense | multiplies mul-free |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (fan_in, fan_out) in [(200, 500), (1024, 1024)]:
        for zeros in (0.3, 0.7):
            r = torch.rand(fan_out, fan_in, generator=g)
            codes = torch.where(r < (1 - zeros) / 2, 1, torch.where(r < 1 - zeros, -1, 0))
            layer = TernaryLinear.from_codes(codes, torch.tensor(0.05), torch.tensor(0.04),
                                             torch.randn(fan_out, generator=g))
            weight, bias = layer.dense_weight(), layer.bias
            for batch in (1, 64):
                x = torch.randn(batch, fan_in, generator=g)
                assert torch.allclose(layer(x), F.linear(x, weight, bias), atol=1e-4)
                env = {"layer": layer, "x": x, "F": F, "w": weight, "b": bias}
                dense = tbench.Timer("F.linear(x, w, b)", globals=env).blocked_autorange(min_run_time=0.5)
                free = tbench.Timer("layer(x)", globals=env).blocked_autorange(min_run_time=0.5)
                td, tf = dense.median * 1e6, free.median * 1e6
                lines.append(f"| {fan_in} x {fan_out} | {batch} | {100 * zeros:.0f} | {td:.1f} | {tf:.1f} | "
                             f"{tf / td:.1f}x | {batch * fan_in * fan_out:,} | {batch * 2 * fan_out:,} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lenet5", "resnet"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = ["# Binary and ternary networks on digits", "",
           f"Command: `{' '.join(['python', 'benchmarks/lowbit.py', *sys.argv[1:]])}`",
           f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {cpu_name()}, "
           f"torch {torch.__version__}, {args.threads} thread(s); other processes were running.", ""]
    if not args.skip_accuracy:
        out += [f"## Accuracy and storage ({args.epochs} epochs of fine-tuning, Adam lr {args.lr}; "
                "first and last layers full precision)", "",
                *accuracy_table(args.models, args.epochs, args.lr, args.seed), "", LEGEND, ""]
    out += ["## Multiplication-free ternary Linear vs dense matmul (median time per call)", "",
            *timing_table(args.seed), ""]
    print("\n".join(out))


if __name__ == "__main__":
    main()
