"""What each pruning granularity buys in real CPU speed (ratios vs dense, measured in one run).

For each conv net (SmallResNet, LeNet-5) and each granularity, the same dense model is pruned
and baked; then every variant's latency is timed *interleaved* (round-robin, so machine noise
hits all alike), the median kept, and reported as a ratio to the dense model of the same run.

* unstructured 90% and 2:4: the weights are zeros inside dense tensors, so dense kernels do the
  same work: no speedup expected (the win is storage, or sparse hardware);
* channel/filter 50% of the conv filters (DepGraph shrinks coupled layers): smaller tensors,
  fewer MACs, a real speedup.

With ``--accuracy`` the variants start from the trained baselines and are fine-tuned
(``--finetune-epochs``) on digits, and their test accuracy is reported too.

    python benchmarks/prune_structured.py [--batch 256] [--reps 40] [--accuracy]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

import penjing as pj
from penjing.core.trace import layer_macs, trace
from penjing.pruning import PruneConfig, prune

VARIANTS = {
    "dense": None,
    "unstructured 90%": PruneConfig(sparsity=0.9),
    "2:4 (50%)": PruneConfig(granularity="2:4"),
    "filters 50% (structured)": PruneConfig(sparsity=0.5, granularity="filter", layers="Conv2d"),
}


def macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of the weight-bearing layers for one sample of ``x`` (dense
    kernels: a structured prune shrinks the shapes, zeros inside a tensor count)."""
    return sum(layer_macs(trace(model, x[:1])).values())


def timed(models: dict[str, nn.Module], x: torch.Tensor, reps: int) -> dict[str, float]:
    """Median seconds per forward pass, variants interleaved."""
    samples = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():  # warm-up
            for _ in range(3):
                m(x)
        for _ in range(reps):
            for name, m in models.items():
                start = time.perf_counter()
                m(x)
                samples[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in samples.items()}


def build(name: str, accuracy: bool, train, test, epochs: int) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    base = pj.models.pretrained(name, train, progress=False) if accuracy else pj.models.get_model(name)
    variants = {}
    for label, config in VARIANTS.items():
        model = copy.deepcopy(base)
        if config is not None:
            prune(model, config, example_inputs=train.tensors[0][:1])
            if accuracy and epochs:
                pj.fit(model, train, epochs=epochs, lr=1e-3, progress=False)
            pj.bake(model)
        variants[label] = model.eval()
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="resnet,lenet5")
    parser.add_argument("--accuracy", action="store_true", help="start from trained baselines, fine-tune, "
                        "report test accuracy")
    parser.add_argument("--finetune-epochs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = pj.data.digits()
    x = train.tensors[0][: args.batch]
    print(f"batch {args.batch}, {args.threads} thread(s), median of {args.reps} interleaved runs\n")
    head = "| model | variant | params | nonzero weights | MACs / image | latency (ms) | speedup vs dense |"
    if args.accuracy:
        head += " accuracy % |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name in args.models.split(","):
        variants = build(name, args.accuracy, train, test, args.finetune_epochs)
        latency = timed(variants, x, args.reps)
        dense = latency["dense"]
        for label, model in variants.items():
            params = sum(p.numel() for p in model.parameters())
            stats = pj.summary(model)
            row = (f"| {name} | {label} | {params:,} | {stats.nonzeros:,} | {macs(model, x):,} | "
                   f"{1e3 * latency[label]:.3f} | {dense / latency[label]:.2f}x |")
            if args.accuracy:
                row += f" {100 * pj.evaluate(model, test):.2f} |"
            print(row)


if __name__ == "__main__":
    main()
