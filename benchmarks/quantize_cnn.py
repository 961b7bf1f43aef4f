"""int8 CNNs, side by side: penjing's int8 graph vs torch.ao FX (x86) vs fp32.

    python benchmarks/quantize.py --cnn                   # all six models, 224x224
    python benchmarks/quantize.py --cnn --models resnet18 --rounds 3

Needs torchvision and timm (the /work/venv-tv environment). Every model is random-init with
its BatchNorm statistics warmed on random data (a few train-mode forwards), then calibrated
on the same random batch by both penjing (``pj.quantize`` + ``pj.convert``) and torch.ao
(``prepare_fx`` / ``convert_fx`` with ``get_default_qconfig_mapping("x86")``). Latency: one
thread, variants interleaved round-robin (order reversed every other round), the median over
rounds and the spread (min-max); the torch.ao / penjing ratio also in the thread's CPU time
(``time.thread_time``), which leaves out the time a shared machine kept the process waiting.
Error: ``||y - y_fp32|| / ||y_fp32||`` on a held-out random batch.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings

import torch
from torch import nn

import penjing as pj
from penjing.quantization import QuantConfig, convert, quantize

MODELS = ("resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "convnext_tiny", "timm_mobilenetv3")


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name.startswith("timm_"):
        import timm

        return timm.create_model("mobilenetv3_large_100", pretrained=False)
    import torchvision

    return getattr(torchvision.models, name)(weights=None)


@torch.no_grad()
def warm_bn(model: nn.Module, size: int, steps: int = 3) -> nn.Module:
    """Give BatchNorm layers realistic running statistics from random data."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the warm-up batches
    for _ in range(steps):
        model(torch.randn(8, 3, size, size))
    return model.eval()


def penjing_int8(model: nn.Module, calib: torch.Tensor) -> nn.Module:
    m = copy.deepcopy(model)
    quantize(m, QuantConfig(bits=8), data=[calib], progress=False)
    return convert(m)  # the default: the int8 graph on a CNN


def ao_fx(model: nn.Module, calib: torch.Tensor) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    m = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (calib[:1],))
    with torch.no_grad():
        m(calib)
    return convert_fx(m)


@torch.no_grad()
def timed(models: dict[str, nn.Module], x: torch.Tensor, rounds: int,
          limit: dict[str, int] | None = None) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and thread-CPU ms per call, ``rounds`` interleaved rounds (the order reversed every
    other round); a variant in ``limit`` is timed in its first ``limit[name]`` rounds only."""
    for m in models.values():
        m(x)  # warm-up (packing, allocator)
    wall: dict[str, list[float]] = {n: [] for n in models}
    cpu: dict[str, list[float]] = {n: [] for n in models}
    for r in range(rounds):
        for name in (list(models) if r % 2 == 0 else list(reversed(models))):
            if limit and r >= limit.get(name, rounds):
                continue
            start, start_cpu = time.perf_counter(), time.thread_time()
            models[name](x)
            wall[name].append((time.perf_counter() - start) * 1e3)
            cpu[name].append((time.thread_time() - start_cpu) * 1e3)
    return wall, cpu


@torch.no_grad()
def rel_error(model: nn.Module, ref: torch.Tensor, x: torch.Tensor) -> float:
    y = model(x).float()
    return float((y - ref).norm() / ref.norm())


def cnn_table(names: tuple[str, ...], rounds: int, size: int = 224, batches: tuple[int, ...] = (1, 32),
              fp32_rounds: int | None = None) -> list[str]:
    """The table; fp32 is timed in the first ``fp32_rounds`` rounds only (all when None): at
    batch 32 it is the slow part, and int8 is far from it."""
    warnings.filterwarnings("ignore")
    lines = ["| model | batch | fp32 ms | torch.ao FX ms | penjing ms (min-max) | penjing / fp32 time "
             "| torch.ao / penjing time (per-round min-max) | same, thread CPU time (per-round min-max) "
             "| rel. error torch.ao | rel. error penjing | float ops left (penjing) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        model = warm_bn(build(name), size)
        calib = torch.randn(8, 3, size, size)
        probe = torch.randn(4, 3, size, size)
        variants = {"fp32": model, "torch.ao": ao_fx(model, calib), "penjing": penjing_int8(model, calib)}
        ref = model(probe).float()
        err = {k: rel_error(v, ref, probe) for k, v in variants.items() if k != "fp32"}
        notes = [n for n in pj.core.report.last_report(variants["penjing"]).notes if "float around" in n]
        floats = notes[0].split("float around: ")[1] if notes else "none"
        for batch in batches:
            x = torch.randn(batch, 3, size, size)
            t, cpu = timed(variants, x, rounds, None if fp32_rounds is None else {"fp32": fp32_rounds})
            med = {k: statistics.median(v) for k, v in t.items()}
            paired = [a / p for a, p in zip(t["torch.ao"], t["penjing"], strict=True)]  # same round
            paired_cpu = [a / p for a, p in zip(cpu["torch.ao"], cpu["penjing"], strict=True)]
            lines.append(
                f"| {name} | {batch} | {med['fp32']:.1f} | {med['torch.ao']:.1f} | {med['penjing']:.1f} "
                f"({min(t['penjing']):.1f}-{max(t['penjing']):.1f}) | {med['penjing'] / med['fp32']:.2f} "
                f"| {med['torch.ao'] / med['penjing']:.2f} ({min(paired):.2f}-{max(paired):.2f}) "
                f"| {statistics.median(paired_cpu):.2f} ({min(paired_cpu):.2f}-{max(paired_cpu):.2f}) "
                f"| {err['torch.ao']:.4f} | {err['penjing']:.4f} | {floats} |")
        print(lines[-1], flush=True)
    return lines
