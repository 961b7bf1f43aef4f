"""ONNX export benchmark: does every compressed model export, does ONNX Runtime agree with
PyTorch, and how fast does it run.

Models: LeNet-300-100 and SmallResNet (penjing's reference nets, digits-shaped inputs),
torchvision resnet18 and mobilenet_v2 (random init, 224x224), and a BERT-style encoder built
by transformers from a small config (4 layers, hidden 256, 4 heads, 128 tokens). Variants:
dense; pruned (50% magnitude, unstructured) and baked; low-rank (50% of the parameters,
global budget); int8 (PTQ W8A8 per-channel, calibrated on random inputs, ``pj.convert``,
exported as QDQ); int8 dynamic (per-row dynamic activations on the Linear layers, exported as
per-row scales + MatMulInteger; convs weight-only) and int8 weight-only (DequantizeLinear of
int8 weights + float compute). Every variant is exported by ``pj.export`` and run by ONNX Runtime (CPU, all
graph optimizations) on the same inputs as PyTorch.

Columns: the exporter that ran; max relative error ``max|ort - torch| / max|torch|`` of ONNX
Runtime against the same variant in PyTorch; ONNX Runtime latency as a ratio to PyTorch fp32
(the dense model, eager, same thread count) and to ONNX Runtime fp32 (the dense ONNX file),
both measured in the same process: all candidates of a model are timed in interleaved rounds
(each round runs each candidate ``--iters`` times and keeps its median), and the table gives
the median over rounds and the spread (min-max of the per-round ratios). One thread
everywhere. The weights are random, so accuracy is not measured here (see quantization.md).

    PYTHONPATH=src python benchmarks/export.py --out benchmarks/results/export.md
    # torchvision / transformers models need a venv that has them (skipped otherwise)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _machine import cpu_name  # noqa: E402

import penjing as pj  # noqa: E402
from penjing.export.check import feeds, max_rel_error, session  # noqa: E402
from penjing.models import get_model  # noqa: E402


class LastHidden(nn.Module):
    """An HF encoder returning its last hidden state (a plain tensor output)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids).last_hidden_state


def models() -> dict[str, tuple]:
    """name -> (builder, example batch, calibration batch); skips what is not installed."""
    torch.manual_seed(0)
    out = {"LeNet-300-100": (lambda: get_model("lenet300"), torch.randn(32, 64), torch.randn(256, 64)),
           "SmallResNet": (lambda: get_model("resnet", torch.randn(1, 1, 8, 8)), torch.randn(32, 1, 8, 8),
                           torch.randn(256, 1, 8, 8))}
    try:
        import torchvision

        image, calib = torch.randn(1, 3, 224, 224), torch.randn(16, 3, 224, 224)
        out["resnet18"] = (lambda: torchvision.models.resnet18(), image, calib)
        out["mobilenet_v2"] = (lambda: torchvision.models.mobilenet_v2(), image, calib)
    except ImportError:
        print("torchvision not installed: resnet18 / mobilenet_v2 skipped", file=sys.stderr)
    try:
        from transformers import BertConfig, BertModel

        config = BertConfig(vocab_size=8000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                            intermediate_size=1024, max_position_embeddings=256)
        ids = torch.randint(0, 8000, (1, 128))
        out["BERT encoder (4x256)"] = (lambda: LastHidden(BertModel(config, add_pooling_layer=False)), ids,
                                       torch.randint(0, 8000, (16, 128)))
    except ImportError:
        print("transformers not installed: BERT encoder skipped", file=sys.stderr)
    return out


def variants(build, example, calib, wanted: set[str] | None = None) -> dict[str, nn.Module]:
    """The variants of one model; ``wanted``: only these (the dense one always: the baseline)."""
    def want(label: str) -> bool:
        return wanted is None or label in wanted

    dense = build().eval()
    out = {"dense": dense}
    if want("pruned+baked"):
        pruned = copy.deepcopy(dense)
        pj.prune(pruned, pj.PruneConfig(sparsity=0.5), example_inputs=example[:1], progress=False)
        out["pruned+baked"] = pj.bake(pruned).eval()
    if want("low-rank"):
        low = copy.deepcopy(dense)
        pj.lowrank(low, pj.LowRankConfig(params=0.5), example=example[:1])
        out["low-rank"] = low.eval()
    for label, activations in (("int8", "static"), ("int8 dynamic", "dynamic"), ("int8 weight-only", "none")):
        if not want(label):
            continue
        model = copy.deepcopy(dense)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pj.quantize(model, pj.QuantConfig(bits=8, per_channel=True, activations=activations), data=calib)
            pj.convert(model)
        out[label] = model.eval()
    return out


def _median_time(fn, iters: int) -> float:
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(name, build, example, calib, folder: Path, rounds: int, iters: int,
                wanted: set[str] | None = None) -> list[list[str]]:
    models_ = variants(build, example, calib, wanted)
    runs, rows = {}, {}
    runs["torch fp32"] = lambda: models_["dense"](example)
    for label, model in models_.items():
        path = folder / f"{name.split()[0]}-{label.replace(' ', '_')}.onnx"
        try:
            result = pj.export(model, path, example, check=False,
                               calibration=calib if label.startswith("int8") else None)
        except ValueError as exc:
            rows[label] = [name, label, f"no: {exc}", "-", "-", "-"]
            continue
        sess = session(path, threads=1)
        inputs = feeds(sess, (example,))
        with torch.no_grad():
            expected = model(example)
        got = sess.run(None, inputs)
        err = max_rel_error(expected, got)
        runs[label] = (lambda s=sess, i=inputs: s.run(None, i))
        rows[label] = [name, label, result.exporter, f"{err:.1e}"]
    # warm-up, then interleaved rounds
    with torch.no_grad():
        for fn in runs.values():
            fn()
    per_round: dict[str, list[float]] = {k: [] for k in runs}
    with torch.no_grad():
        for _ in range(rounds):
            for key, fn in runs.items():
                per_round[key].append(_median_time(fn, iters))
    out = []
    for label, row in rows.items():
        if len(row) == 6:
            out.append(row)
            continue
        vs_torch = [t / b for t, b in zip(per_round[label], per_round["torch fp32"], strict=True)]
        vs_ort = [t / b for t, b in zip(per_round[label], per_round.get("dense", per_round[label]), strict=True)]
        ms = 1e3 * statistics.median(per_round[label])
        out.append([*row, f"{ms:.2f} ms: {statistics.median(vs_torch):.2f}x ({min(vs_torch):.2f}-{max(vs_torch):.2f})",
                    f"{statistics.median(vs_ort):.2f}x ({min(vs_ort):.2f}-{max(vs_ort):.2f})"])
    torch_ms = 1e3 * statistics.median(per_round["torch fp32"])
    out.append([name, "(PyTorch fp32 eager)", "-", "-", f"{torch_ms:.2f} ms: 1.00x", "-"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--only", help="comma-separated model names (default: all)")
    parser.add_argument("--variants", help="comma-separated variants (default: all): dense, pruned+baked, "
                        "low-rank, int8, int8 dynamic, int8 weight-only (dense always runs: the baseline)")
    parser.add_argument("--out", help="write the markdown table here too")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    import onnxruntime

    header = [f"# ONNX export: `{' '.join(['python', 'benchmarks/export.py', *sys.argv[1:]])}`", "",
              f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu_name()}; torch {torch.__version__}, "
              f"onnxruntime {onnxruntime.__version__}; 1 thread; {args.rounds} interleaved rounds x "
              f"{args.iters} runs; load at start: `{load}`", ""]
    table = ["| model | variant | exporter | max rel. error (ORT vs torch) | ORT latency vs PyTorch fp32 "
             "(spread) | vs ORT fp32 (spread) |", "|---|---|---|---:|---:|---:|"]
    chosen = models()
    if args.only:
        keep = {n.strip() for n in args.only.split(",")}
        chosen = {k: v for k, v in chosen.items() if k in keep}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (build, example, calib) in chosen.items():
            print(f"{name}...", file=sys.stderr, flush=True)
            wanted = {v.strip() for v in args.variants.split(",")} if args.variants else None
            for row in bench_model(name, build, example, calib, Path(tmp), args.rounds, args.iters, wanted):
                table.append("| " + " | ".join(row) + " |")
                print(table[-1], file=sys.stderr, flush=True)
    load_end = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    text = "\n".join([*header, *table, "", f"Load at the end: `{load_end}`", ""])
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
