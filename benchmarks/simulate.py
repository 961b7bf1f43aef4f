"""Hardware models benchmark: how fast the simulator is, and what it reports.

Run: ``python benchmarks/simulate.py`` (writes nothing; the committed output is
``benchmarks/results/simulate.md``).

1. Speed: a plain forward pass of each model is the baseline measured in the same run; the
   simulator's cost is one traced forward pass plus the closed-form per-layer model.
2. ResNet-50 (built from plain modules, 224x224) on the TPU v1 and edge presets, each dataflow.
3. LeNet-300-100 energy per inference, dense -> pruned to 8% -> 5-bit shared, using the real
   penjing.pruning / penjing.sharing (the hw package itself never imports them).
4. One training step, fp32 vs mixed fp16/fp32; data-parallel projections.
"""

from __future__ import annotations

import statistics
import time

import torch
from _machine import cpu_name  # benchmarks/ is on sys.path when a script runs
from torch import nn

import penjing as pj
from penjing.hw import energy, load_hw, simulate_layers, trace
from penjing.hw.comm import parse_bandwidth, project_step
from penjing.hw.training import training_step_layers


def resnet50(width=64, blocks=(3, 4, 6, 3), classes=1000):
    """ResNet-50 (He et al. 2016) from plain modules: 49 convs + fc, 4 projection shortcuts."""

    class Bottleneck(nn.Module):
        def __init__(self, cin, mid, stride):
            super().__init__()
            cout = 4 * mid
            self.body = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.proj = None if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return torch.relu(self.body(x) + (x if self.proj is None else self.proj(x)))

    layers = [nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
              nn.MaxPool2d(3, stride=2, padding=1)]
    cin = width
    for i, n in enumerate(blocks):
        for j in range(n):
            layers.append(Bottleneck(cin, width * 2 ** i, 2 if j == 0 and i > 0 else 1))
            cin = 4 * width * 2 ** i
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers).eval()


def median_time(fn, repeats=5):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)



def speed() -> None:
    print("## 1. Simulator speed (median of 5; baseline: a plain forward pass, same run)\n")
    print("| model | input | layers | forward ms (baseline) | trace ms | simulate ms (analytic) | "
          "trace + simulate ms | vs forward |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    tpu = load_hw("tpu-v1")
    for name, model, x in [("ResNet-50 (plain modules)", resnet50(), torch.randn(1, 3, 224, 224)),
                           ("ResNet-50, width 16", resnet50(width=16), torch.randn(1, 3, 64, 64)),
                           ("LeNet-300-100", pj.models.LeNet300(), torch.rand(1, 1, 8, 8))]:
        with torch.no_grad():
            fwd = median_time(lambda m=model, x=x: m(x))
        tr = median_time(lambda m=model, x=x: trace(m, x))
        layers = trace(model, x)
        sim = median_time(lambda ls=layers: simulate_layers(ls, tpu))
        total = tr + sim
        gemms = sum(1 for lay in layers if lay.kind == "gemm")
        print(f"| {name} | {'x'.join(map(str, x.shape))} | {gemms} GEMM + {len(layers) - gemms} memory | "
              f"{fwd * 1e3:.1f} | {tr * 1e3:.1f} | {sim * 1e3:.2f} | {total * 1e3:.1f} | {total / fwd:.2f}x |")


def dataflows() -> None:
    print("\n## 2. ResNet-50, 224x224, on the presets (per batch)\n")
    print("| hardware | dataflow | batch | cycles | stall % | utilisation | DRAM MB | time ms | "
          "energy/inference | memory-bound layers |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    model = resnet50()
    for batch in (1, 8):
        layers = trace(model, torch.randn(batch, 3, 224, 224))
        for hw_name in ("tpu-v1", "edge"):
            hw = load_hw(hw_name)
            for df in ("os", "ws", "is"):
                rep = simulate_layers(layers, hw, dataflow=df, batch=batch)
                gemms = [r for r in rep.rows if r.kind == "gemm"]
                mem = sum(1 for r in gemms if r.bound == "memory")
                print(f"| {hw_name} | {df} | {batch} | {rep.cycles:,.0f} | {100 * rep.stall_cycles / rep.cycles:.1f} | "
                      f"{100 * rep.utilisation:.1f}% | {rep.dram_bytes / 1e6:.1f} | {rep.time_s * 1e3:.2f} | "
                      f"{rep.energy_pj / batch / 1e9:.2f} mJ | {mem}/{len(gemms)} |")


def lenet_energy() -> None:
    print("\n## 3. LeNet-300-100 (digits) energy per inference, 45 nm table, 8 KiB on-chip SRAM\n")
    torch.manual_seed(0)
    model = pj.models.LeNet300()
    x = torch.rand(1, 1, 8, 8)
    steps = [("dense fp32", energy(model, x))]
    pj.prune(model, pj.PruneConfig(sparsity=0.92), progress=False)
    steps.append(("pruned to 8% (penjing.pruning)", energy(model, x)))
    pj.share(model, pj.ShareConfig(bits=5))
    steps.append(("+ 5-bit sharing (penjing.sharing)", energy(model, x)))
    base = steps[0][1].total_pj
    print("| model | weights from | compute nJ | SRAM nJ | DRAM nJ | total nJ | lower by |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, rep in steps:
        b = rep.breakdown()
        print(f"| {name} | {'SRAM' if rep.weights_on_chip else 'DRAM'} | {b['compute'] / 1e3:.1f} | "
              f"{b['sram'] / 1e3:.1f} | {b['dram'] / 1e3:.1f} | {rep.total_pj / 1e3:.2f} | {base / rep.total_pj:.1f}x |")


def training() -> None:
    print("\n## 4. One training step (ResNet-50 width 16, 64x64, batch 32, on the TPU v1 array)\n")
    model = resnet50(width=16)
    x = torch.randn(32, 3, 64, 64)
    layers = trace(model, x)
    hw = load_hw("tpu-v1")
    print("| precision | cycles | time ms | DRAM MB | energy mJ |")
    print("|---|---:|---:|---:|---:|")
    costs = {}
    for p in ("fp32", "mixed"):
        c = costs[p] = training_step_layers(layers, hw, p, batch=32)
        print(f"| {p} | {c.cycles:,.0f} | {c.time_s * 1e3:.2f} | {c.dram_bytes / 1e6:.1f} | {c.energy_pj / 1e9:.3f} |")
    print(f"\nmixed vs fp32: {costs['fp32'].energy_pj / costs['mixed'].energy_pj:.2f}x less energy, "
          f"{costs['fp32'].cycles / costs['mixed'].cycles:.2f}x fewer cycles")

    print("\n### Data-parallel projection (the same model: fp32 gradient; compute per step measured "
          "here, forward + backward at batch 32 per worker)\n")
    grad_bytes = 4 * sum(p.numel() for p in model.parameters())
    model.train()

    def step():
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()

    measured = median_time(step, repeats=3)
    simulated = costs["fp32"].time_s
    print(f"gradient {grad_bytes / 1e6:.1f} MB, alpha 50 us; compute per step: {measured * 1e3:.0f} ms "
          f"measured on this CPU, {simulated * 1e3:.2f} ms simulated on the TPU v1 array (fp32)\n")
    print("| compute | workers | bandwidth | scheme | comm ms | step ms | speed-up | efficiency |")
    print("|---|---:|---|---|---:|---:|---:|---:|")
    for source, compute in (("CPU, measured", measured), ("TPU-v1 array, simulated", simulated)):
        for workers in (8, 64):
            for bw in ("10Gbit", "100Gbit"):
                for scheme in ("ring", "ps"):
                    for density in (None, 0.001):
                        p = project_step(grad_bytes, compute, workers, parse_bandwidth(bw), scheme=scheme,
                                         density=density)
                        label = ("ring all-reduce" if scheme == "ring" else "param. server") + \
                            (" + DGC 0.1%" if density else "")
                        print(f"| {source} | {workers} | {bw} | {label} | {p.comm_s * 1e3:.2f} | "
                              f"{p.step_s * 1e3:.2f} | {p.speedup:.1f}x | {100 * p.efficiency:.0f}% |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(f"# penjing hardware models benchmark\n\nmachine: {cpu_name()}, torch {torch.__version__}, "
          "1 thread (other processes were running)\n")
    speed()
    dataflows()
    lenet_energy()
    training()
