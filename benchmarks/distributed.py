"""Distributed training benchmarks, each in one run on real torch.distributed processes.

1. Deep Gradient Compression on digits (LeNet-300-100, 2 processes, gloo): gradient bytes
   each rank sends and test accuracy, plain DDP vs PyTorch's fp16 hook vs DGC.
2. Throughput of 1 vs 2 processes on this machine, next to the alpha-beta cost model's
   projection (penjing.hw.comm) fed with the measured compute time and the measured
   loopback all-reduce bandwidth: the model checked against a measurement.

    python benchmarks/distributed.py [--epochs 40]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
from _machine import cpu_name  # benchmarks/ is on sys.path when a script runs
from torch import nn

from penjing.distributed import spawn
from penjing.distributed.dgc import (
    AllReduceCounter,
    DGCConfig,
    DGCState,
    counting_allreduce_hook,
    dgc_hook,
)


def train_digits(method: str, epochs: int) -> dict:
    from penjing.data import digits
    from penjing.distributed import fit_ddp
    from penjing.models import LeNet300
    from penjing.train import evaluate

    train, test = digits()
    torch.manual_seed(0)
    model = LeNet300()
    steps_per_epoch = -(-len(train) // 2 // 32)
    if method == "dgc":
        state = DGCState(DGCConfig(sparsity=0.999, momentum=0.9, warmup_steps=steps_per_epoch))
        hook, momentum = dgc_hook, 0.0      # DGC carries the momentum itself (correction)
    else:
        state = AllReduceCounter(compress_fp16=method == "fp16")
        hook, momentum = counting_allreduce_hook, 0.9
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum)
    fit_ddp(model, train, epochs=epochs, batch_size=64, seed=0, optimizer=optimizer, progress=False,
            comm_hook=hook, hook_state=state)
    return {"bytes": state.bytes_sent, "accuracy": evaluate(model, test)}


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))


def step_time(steps: int, batch: int) -> dict:
    """Median time of a DDP training step (per-worker ``batch``) on this rank."""
    from torch.nn.parallel import DistributedDataParallel

    model = mlp()
    ddp = DistributedDataParallel(model) if dist.get_world_size() > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(batch, 784), torch.randint(0, 10, (batch,))
    times = []
    for i in range(steps + 3):
        dist.barrier()
        t = time.perf_counter()
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t)
    times.sort()
    return {"step_s": times[len(times) // 2], "grad_bytes": 4 * sum(p.numel() for p in model.parameters())}


def allreduce_time(nbytes: int, repeats: int = 7) -> float:
    buf = torch.zeros(nbytes // 4)
    times = []
    for _ in range(repeats):
        dist.barrier()
        t = time.perf_counter()
        dist.all_reduce(buf)
        times.append(time.perf_counter() - t)
    return sorted(times)[repeats // 2]


def link_model() -> dict:
    """alpha and bandwidth of this machine's loopback, fitted from two all-reduce sizes
    (a 2-rank ring all-reduce sends n/2 bytes twice: t = 2 alpha + n / B)."""
    small, large = 4096, 8 * 2**20
    t_small, t_large = allreduce_time(small), allreduce_time(large)
    bandwidth = (large - small) / max(t_large - t_small, 1e-9)
    return {"alpha": max((t_small - small / bandwidth) / 2, 0.0), "bandwidth": bandwidth}



def main() -> None:
    from penjing.hw.comm import project_step

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch", type=int, default=256, help="per-worker batch of the throughput test")
    args = parser.parse_args()
    print(f"# distributed benchmarks\n\nmachine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f} at start\n")

    print(f"## Deep Gradient Compression, LeNet-300-100 on digits, 2 processes, {args.epochs} epochs\n")
    print("| method | bytes sent per rank | ratio vs DDP | test accuracy |\n|---|---:|---:|---:|")
    results = {m: spawn(train_digits, 2, m, args.epochs)[0] for m in ("ddp", "fp16", "dgc")}
    base = results["ddp"]
    for method, label in (("ddp", "plain DDP (all-reduce fp32)"), ("fp16", "DDP + fp16 hook"),
                          ("dgc", "DGC 99.9% (warm-up 1 epoch)")):
        r = results[method]
        print(f"| {label} | {r['bytes']:,} | {base['bytes'] / r['bytes']:.1f}x | {100 * r['accuracy']:.2f}% |")

    print(f"\n## Throughput, MLP 784-1024-1024-10, per-worker batch {args.batch}\n")
    one = spawn(step_time, 1, 20, args.batch)[0]
    two = spawn(step_time, 2, 20, args.batch)[0]
    link = spawn(link_model, 2)[0]
    proj = project_step(one["grad_bytes"], one["step_s"], 2, link["bandwidth"], latency=link["alpha"])
    measured_speedup = 2 * one["step_s"] / two["step_s"]
    print("| | step time | samples/s | speed-up vs 1 process |\n|---|---:|---:|---:|")
    print(f"| 1 process (measured) | {1e3 * one['step_s']:.1f} ms | {args.batch / one['step_s']:.0f} | 1.00x |")
    print(f"| 2 processes (measured) | {1e3 * two['step_s']:.1f} ms | {2 * args.batch / two['step_s']:.0f} | "
          f"{measured_speedup:.2f}x |")
    print(f"| 2 processes (cost model: ring, no overlap) | {1e3 * proj.step_s:.1f} ms | "
          f"{2 * args.batch / proj.step_s:.0f} | {proj.speedup:.2f}x |")
    print(f"\nloopback link fitted in the same run: alpha {1e6 * link['alpha']:.0f} us, bandwidth "
          f"{link['bandwidth'] / 1e9:.2f} GB/s; gradient {one['grad_bytes'] / 2**20:.1f} MiB. The model takes the "
          "1-process compute time as each worker's compute; on a 2-core machine two processes also "
          "contend for the cores, which the model does not see.")


if __name__ == "__main__":
    main()
