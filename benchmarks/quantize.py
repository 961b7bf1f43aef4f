"""Int8 execution, side by side: penjing vs torch.ao.quantization (dynamic, static) vs torchao.

    python benchmarks/quantize.py            # full run (a few minutes on one core)
    python benchmarks/quantize.py --quick    # fewer rounds
    python benchmarks/quantize.py --accuracy # PTQ / QAT accuracy table of the reference models

Two models, both ``Linear/ReLU`` MLPs:

* 784-300-100-10 trained on the bundled digits upsampled to 28x28 (accuracy on the test split);
* 1024-4096-4096-1000 with random weights (latency; "accuracy" is top-1 agreement with the
  float model on random inputs, plus the SQNR of the logits).

Every variant is measured in the same process, one thread (``torch.set_num_threads(1)``),
interleaved round-robin so that load from other processes hits all of them alike; the
reported latency is the median over rounds. Ratios are against float32 and against the
fastest baseline (torch.ao / torchao) at the same batch size, measured in the same run.
Size is the serialized ``state_dict`` (``torch.save``) in bytes.
"""

from __future__ import annotations

import argparse
import copy
import io
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from _machine import cpu_name  # benchmarks/ is on sys.path when a script runs
from torch import nn
from torch.utils.data import TensorDataset

import penjing as pj
from penjing.quantization import QuantConfig, convert, quantize

warnings.filterwarnings("ignore")  # torch.ao's deprecation notices, once per call site


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def digits28() -> tuple[TensorDataset, TensorDataset]:
    """The bundled digits at 28x28 (bilinear), flattened to 784 features."""
    out = []
    for ds in pj.data.digits():
        x, y = ds.tensors
        big = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).flatten(1)
        out.append(TensorDataset(big, y))
    return out[0], out[1]


# ------------------------------------------------------------------------ variants


def penjing_int8(model: nn.Module, calib: torch.Tensor) -> nn.Module:
    """The default: 8-bit per-channel weights on a 7-bit range, full 8-bit activations, ReLU fused."""
    m = copy.deepcopy(model)
    quantize(m, QuantConfig(bits=8, per_channel=True), data=calib, progress=False)
    return convert(m)


def penjing_int8_a7(model: nn.Module, calib: torch.Tensor) -> nn.Module:
    """torch.ao's x86 grid: full 8-bit weights, 7-bit-range activations (needs an input clamp)."""
    m = copy.deepcopy(model)
    quantize(m, QuantConfig(bits=8, per_channel=True, reduce_range="activations"), data=calib, progress=False)
    return convert(m)


def ao_dynamic(model: nn.Module, calib: torch.Tensor) -> nn.Module:
    from torch.ao.quantization import quantize_dynamic

    torch.backends.quantized.engine = "x86"
    return quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)


def ao_static(model: nn.Module, calib: torch.Tensor) -> nn.Module:
    """Eager-mode static quantization, Linear+ReLU fused, the x86 default qconfig."""
    from torch.ao import quantization as q

    torch.backends.quantized.engine = "x86"
    m = nn.Sequential(q.QuantStub(), *copy.deepcopy(model), q.DeQuantStub()).eval()
    fuse = [[str(i), str(i + 1)] for i in range(1, len(m) - 1)
            if isinstance(m[i], nn.Linear) and isinstance(m[i + 1], nn.ReLU)]
    m = q.fuse_modules(m, fuse)
    m.qconfig = q.get_default_qconfig("x86")
    q.prepare(m, inplace=True)
    with torch.no_grad():
        for chunk in calib.split(256):
            m(chunk)
    return q.convert(m)


def torchao_variant(config_name: str):
    def build(model: nn.Module, calib: torch.Tensor) -> nn.Module:
        import torchao.quantization as tq

        m = copy.deepcopy(model)
        tq.quantize_(m, getattr(tq, config_name)())
        return m
    return build


VARIANTS = {
    "fp32": lambda m, c: m,
    "penjing int8 (default)": penjing_int8,
    "penjing int8 (7-bit activations)": penjing_int8_a7,
    "torch.ao dynamic int8": ao_dynamic,
    "torch.ao static int8": ao_static,
    "torchao int8 dyn-act+weight": torchao_variant("Int8DynamicActivationInt8WeightConfig"),
    "torchao int8 weight-only": torchao_variant("Int8WeightOnlyConfig"),
}
BASELINES = [k for k in VARIANTS if k.startswith(("torch.ao", "torchao"))]


def size_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


@torch.no_grad()
def latency(models: dict[str, nn.Module], x: torch.Tensor, rounds: int, budget: float) -> dict[str, float]:
    """Median ms per call over ``rounds`` interleaved rounds of about ``budget`` s each."""
    reps = {}
    for name, m in models.items():
        m(x)
        start = time.perf_counter()
        m(x)
        once = time.perf_counter() - start
        reps[name] = max(1, min(50, int(budget / max(once, 1e-6))))
    samples: dict[str, list[float]] = {n: [] for n in models}
    for r in range(rounds):
        for name, m in models.items():
            if r > 0 and samples[name][0] > 2000:  # seconds per call: one round says enough
                continue
            start = time.perf_counter()
            for _ in range(reps[name]):
                m(x)
            samples[name].append((time.perf_counter() - start) / reps[name] * 1e3)
    return {n: statistics.median(v) for n, v in samples.items()}


@torch.no_grad()
def agreement(model: nn.Module, ref: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    y, r = model(x).float(), ref(x).float()
    top1 = float((y.argmax(1) == r.argmax(1)).float().mean())
    from penjing.quantization import sqnr_db

    return top1, sqnr_db(r, y)


def run_model(title: str, model: nn.Module, calib: torch.Tensor, eval_fn, in_features: int, rounds: int,
              budget: float) -> list[str]:
    model.eval()
    built, failed = {}, {}
    for name, build in VARIANTS.items():
        try:
            built[name] = build(model, calib).eval()
            with torch.no_grad():
                built[name](calib[:2])
        except Exception as exc:  # noqa: BLE001 -- a baseline that does not run here is reported
            failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    acc = {n: eval_fn(m) for n, m in built.items()}
    times = {}
    for batch in (1, 32, 256):
        x = torch.randn(batch, in_features) if title.startswith("MLP 1024") else calib[:batch].clone()
        if len(x) < batch:
            x = x.repeat(-(-batch // len(x)), 1)[:batch]
        times[batch] = latency(built, x, rounds, budget)
    lines = [f"### {title}", "",
             "| variant | accuracy | size (bytes) | ms @1 | ms @32 | ms @256 | x fp32 @32 | x fp32 @256 "
             "| vs fastest baseline @1 | @32 | @256 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in built:
        t = {b: times[b][name] for b in times}
        fastest = {b: min(times[b][n] for n in BASELINES if n in built) for b in times}
        lines.append(
            f"| {name} | {acc[name]} | {size_bytes(built[name]):,} | {t[1]:.3f} | {t[32]:.3f} | {t[256]:.3f} "
            f"| {times[32]['fp32'] / t[32]:.2f}x | {times[256]['fp32'] / t[256]:.2f}x "
            f"| {fastest[1] / t[1]:.2f}x | {fastest[32] / t[32]:.2f}x | {fastest[256] / t[256]:.2f}x |")
    for name, why in failed.items():
        lines.append(f"| {name} | did not run: {why} | | | | | | | | | |")
    lines.append("")
    return lines


def accuracy_table() -> list[str]:
    """The issue's accuracy targets on digits: PTQ W8A8, QAT W4A8 and W2A8, per model."""
    from penjing.models import pretrained
    from penjing.quantization import qat_fit

    train, test = pj.data.digits()
    rows = ["### Accuracy on digits (test split, %)", "",
            "| model | float | PTQ W8A8 fake-quant | PTQ W8A8 int8 kernels | PTQ W4A8 | QAT W4A8 (LSQ, 5 ep) "
            "| QAT W4A8 int8 kernels | QAT W2A8 (LSQ, 10 ep) | QAT W2A8 int8 kernels |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name in ("lenet300", "lenet5", "resnet"):
        base = pretrained(name, train, progress=False)
        f = pj.evaluate(base, test)
        m = quantize(copy.deepcopy(base), QuantConfig(bits=8), data=train, progress=False)
        p8 = pj.evaluate(m, test)
        p8i = pj.evaluate(convert(m), test)
        p4 = pj.evaluate(quantize(copy.deepcopy(base), QuantConfig(bits=4), data=train, progress=False), test)
        cells = []
        for bits, epochs in ((4, 5), (2, 10)):
            m = qat_fit(copy.deepcopy(base), QuantConfig(bits=bits, mode="qat", lsq=True), train,
                        epochs=epochs, lr=1e-4 if bits == 4 else 3e-4, progress=False)
            cells += [pj.evaluate(m, test), pj.evaluate(convert(m), test)]
        vals = [f, p8, p8i, p4, *cells]
        rows.append(f"| {name} | " + " | ".join(f"{100 * v:.2f}" for v in vals) + " |")
    rows.append("")
    return rows


def header(what: str) -> str:
    """Date, CPU model, its SIMD flags, torch and the machine's load (``uptime``) at the start."""
    import os
    from datetime import datetime, timezone
    from pathlib import Path

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    simd = " ".join(f for f in flags if f.startswith(("avx", "amx")) or "vnni" in f) or "unknown"
    return (f"- {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu_name()}, {os.cpu_count()} cores, "
            f"flags: {simd}; torch {torch.__version__}, 1 thread; load (1/5/15 min) at the start "
            f"{' / '.join(f'{v:.1f}' for v in os.getloadavg())}; {what}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--accuracy", action="store_true", help="only the digits accuracy table")
    parser.add_argument("--cnn", action="store_true", help="torchvision/timm CNNs vs torch.ao FX (needs venv-tv)")
    parser.add_argument("--bert", action="store_true", help="HF BERT encoder, dynamic int8 + SmoothQuant (venv-tv)")
    parser.add_argument("--models", default=None, help="--cnn: comma-separated subset")
    parser.add_argument("--rounds", type=int, default=5, help="--cnn: timed rounds per variant")
    parser.add_argument("--size", type=int, default=224, help="--cnn: image size")
    parser.add_argument("--fp32-rounds", type=int, default=None,
                        help="--cnn: time fp32 in the first N rounds only (default: every round)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.accuracy:
        print("\n".join(accuracy_table()))
        return 0
    if args.bert:
        import os

        from quantize_bert import bert_table

        print(header(f"{args.rounds} rounds"), flush=True)
        print("\n".join(bert_table(args.rounds)))
        print(f"- load at the end {os.getloadavg()[0]:.1f}")
        return 0
    if args.cnn:
        import os

        from quantize_cnn import MODELS, cnn_table

        names = tuple(args.models.split(",")) if args.models else MODELS
        print(header(f"{args.size}x{args.size}, {args.rounds} rounds"), flush=True)
        print("\n".join(cnn_table(names, args.rounds, args.size, fp32_rounds=args.fp32_rounds)))
        print(f"- load at the end {os.getloadavg()[0]:.1f}")
        return 0
    rounds, budget = (3, 0.1) if args.quick else (15, 0.25)
    from datetime import datetime, timezone
    from importlib.metadata import PackageNotFoundError, version

    try:
        torchao = version("torchao")
    except PackageNotFoundError:
        torchao = "not installed (pip install -e '.[bench]')"
    out = [f"- {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {cpu_name()}, "
           f"{torch.backends.cpu.get_cpu_capability()}, 1 thread; torch {torch.__version__}, torchao {torchao}", ""]

    train, test = digits28()
    small = mlp([784, 300, 100, 10])
    pj.fit(small, train, epochs=20, lr=2e-3, batch_size=64, progress=False)
    calib = train.tensors[0][:512]

    def test_acc(m):
        return f"{100 * pj.evaluate(m, test):.2f}%"

    out += run_model("MLP 784-300-100-10 (digits at 28x28, test accuracy)", small, calib, test_acc, 784,
                     rounds, budget)

    big = mlp([1024, 4096, 4096, 1000]).eval()
    calib_big = torch.randn(256, 1024)
    probe = torch.randn(512, 1024)

    def agree(m):
        top1, db = agreement(m, big, probe)
        return f"{100 * top1:.1f}% top-1 agree, {db:.1f} dB"

    out += run_model("MLP 1024-4096-4096-1000 (random weights, agreement with fp32)", big, calib_big, agree,
                     1024, rounds, budget)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
