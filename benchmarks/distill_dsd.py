"""Knowledge distillation and DSD on digits, against same-budget baselines, over 3 seeds.

    python benchmarks/distill_dsd.py

KD: teacher LeNet-300-100 (50,610 parameters, 60 epochs); student 64-64-10 MLP (4,810
parameters, 10.5x fewer), 100 epochs Adam lr 3e-3 either on the labels alone or with
distillation (T=4, alpha=0.9). DSD: LeNet-300-100, 60 epochs in all: dense (lr 1e-3
throughout), dense with DSD's learning-rate drop (lr/10 for the last third: separates the
effect of the drop from that of the sparse phase), and DSD (20 dense, 20 at 50% sparsity,
20 re-dense at lr/10). Every number is a test accuracy measured in this run.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

from penjing.data import digits
from penjing.models import get_model
from penjing.train import DistillConfig, DSDConfig, evaluate, fit

SEEDS = (0, 1, 2)


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def student(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def lenet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return get_model("lenet300")


def lr_drop(optimizer: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """lr/10 from the step where DSD's re-dense phase starts."""
    second = DSDConfig().boundaries(total)[1]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 if step < second else 0.1)


def pct(values: list[float]) -> str:
    return " / ".join(f"{100 * v:.2f}" for v in values)


def mean(values: list[float]) -> str:
    return f"{100 * statistics.mean(values):.2f}"


def distillation(train, test, epochs: int) -> None:
    teacher = lenet(0)
    fit(teacher, train, epochs=60, seed=0, progress=False)
    scratch, kd = [], []
    for seed in SEEDS:
        s = student(seed)
        fit(s, train, epochs=epochs, lr=3e-3, seed=seed, progress=False)
        scratch.append(evaluate(s, test))
        s = student(seed)
        fit(s, train, epochs=epochs, lr=3e-3, seed=seed, teacher=teacher,
            distill=DistillConfig(T=4, alpha=0.9), progress=False)
        kd.append(evaluate(s, test))
    print(f"## Distillation: teacher LeNet-300-100 ({params(teacher):,} params) "
          f"{100 * evaluate(teacher, test):.2f}%; student 64-64-10 ({params(student(0)):,} params, "
          f"{params(teacher) / params(student(0)):.1f}x fewer), {epochs} epochs\n")
    print("| student trained on | seeds 0 / 1 / 2 (%) | mean (%) |")
    print("|---|---:|---:|")
    print(f"| labels alone | {pct(scratch)} | {mean(scratch)} |")
    print(f"| KD (T=4, alpha=0.9) | {pct(kd)} | {mean(kd)} |")
    print(f"\nKD - labels alone: {100 * (statistics.mean(kd) - statistics.mean(scratch)):+.2f} points\n")


def dense_sparse_dense(train, test, epochs: int) -> None:
    dense, dropped, dsd, phases = [], [], [], []
    for seed in SEEDS:
        m = lenet(seed)
        fit(m, train, epochs=epochs, seed=seed, progress=False)
        dense.append(evaluate(m, test))
        m = lenet(seed)
        fit(m, train, epochs=epochs, seed=seed, scheduler=lr_drop, progress=False)
        dropped.append(evaluate(m, test))
        m = lenet(seed)
        history = fit(m, train, epochs=epochs, seed=seed, test=test, dsd=DSDConfig(sparsity=0.5),
                      progress=False)
        dsd.append(history["test_acc"])
        phases.append([p["test_acc"] for p in history["phases"]])
    print(f"## DSD: LeNet-300-100, {epochs} epochs in all, Adam lr 1e-3, 50% sparsity\n")
    print("| training | seeds 0 / 1 / 2 (%) | mean (%) |")
    print("|---|---:|---:|")
    print(f"| dense, constant lr | {pct(dense)} | {mean(dense)} |")
    print(f"| dense, lr/10 for the last third | {pct(dropped)} | {mean(dropped)} |")
    print(f"| DSD (dense -> sparse -> re-dense at lr/10) | {pct(dsd)} | {mean(dsd)} |")
    print("\nDSD accuracy after each phase (dense / sparse / re-dense, %):\n")
    for seed, accs in zip(SEEDS, phases, strict=True):
        print(f"- seed {seed}: {pct(accs)}")
    print(f"\nDSD - dense: {100 * (statistics.mean(dsd) - statistics.mean(dense)):+.2f} points; "
          f"DSD - dense with the same lr drop: "
          f"{100 * (statistics.mean(dsd) - statistics.mean(dropped)):+.2f} points")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kd-epochs", type=int, default=100)
    parser.add_argument("--dsd-epochs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = digits()
    distillation(train, test, args.kd_epochs)
    dense_sparse_dense(train, test, args.dsd_epochs)


if __name__ == "__main__":
    main()
