"""penjing's int8 graph vs torch.ao FX (x86) alone, on one model and batch: a focused check.

    PYTHONPATH=src /work/venv-tv/bin/python benchmarks/quantize_pair.py --models resnet18,resnet50 \\
        --batch 32 --rounds 9

The same models, calibration and error measure as ``quantize.py --cnn`` (benchmarks/quantize_cnn.py),
without fp32 (which at batch 32 costs more than both int8 variants together). One thread; each
round times the two back to back, alternating which goes first; printed: the medians, the median
of the per-round ratios torch.ao / penjing (>= 1.00: penjing at least as fast) and their min-max,
in wall time and in the thread's CPU time (``time.thread_time``: on a shared machine it leaves
out the time the process waited for a core, which wall time counts).
``--timed-first`` calls both models at the timed batch before the error probe, so torch.ao's
convs cache their oneDNN primitive for that batch (see src/penjing/quantization/per_shape.py).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from _machine import cpu_name  # benchmarks/ is on sys.path when a script runs
from quantize_cnn import ao_fx, build, penjing_int8, rel_error, warm_bn


@torch.no_grad()
def pair(name: str, batch: int, rounds: int, size: int, timed_first: bool) -> str:
    model = warm_bn(build(name), size)
    calib, probe = torch.randn(8, 3, size, size), torch.randn(4, 3, size, size)
    variants = {"torch.ao": ao_fx(model, calib), "penjing": penjing_int8(model, calib)}
    x = torch.randn(batch, 3, size, size)
    if timed_first:  # the first call at the timed batch: torch.ao's one cached oneDNN primitive fits it
        for m in variants.values():
            m(x)
    ref = model(probe).float()
    err = {k: rel_error(m, ref, probe) for k, m in variants.items()}  # as quantize.py --cnn: batch 4
    for m in variants.values():
        m(x)
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        for k in (list(variants) if r % 2 == 0 else list(reversed(variants))):
            start, start_cpu = time.perf_counter(), time.thread_time()
            variants[k](x)
            wall[k].append((time.perf_counter() - start) * 1e3)
            cpu[k].append((time.thread_time() - start_cpu) * 1e3)
    cells = []
    for times in (wall, cpu):
        ratios = [a / p for a, p in zip(times["torch.ao"], times["penjing"], strict=True)]
        med = {k: statistics.median(v) for k, v in times.items()}
        cells.append(f"{med['torch.ao']:.1f} | {med['penjing']:.1f} | {statistics.median(ratios):.3f} "
                     f"({min(ratios):.2f}-{max(ratios):.2f})")
    return f"| {name} | {batch} | {' | '.join(cells)} | {err['torch.ao']:.4f} | {err['penjing']:.4f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,resnet50")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--timed-first", action="store_true",
                        help="call both models at the timed batch first (quantize.py --cnn calls them at batch 4)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    first = "the timed batch" if args.timed_first else "batch 4 (the error probe)"
    print(f"{cpu_name()}; torch {torch.__version__}, 1 thread, {args.size}x{args.size}, {args.rounds} rounds; "
          f"first call at {first}")
    print("| model | batch | torch.ao FX ms | penjing ms | torch.ao / penjing, median of per-round ratios "
          "(min-max) | torch.ao CPU ms | penjing CPU ms | CPU-time ratio (min-max) | rel. error torch.ao "
          "| rel. error penjing |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        print(pair(name, args.batch, args.rounds, args.size, args.timed_first), flush=True)


if __name__ == "__main__":
    main()
