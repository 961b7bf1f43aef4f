"""The README's accuracy figures over seeds: each figure re-measured at fine-tuning seeds 0-2,
printed as a range (min-max) with the per-seed values, so the README quotes ranges, not a
lucky run.

Every run starts from the cached trained baseline of its model (``penjing.models.pretrained``,
seed 0) and the bundled digits; only the fine-tuning seed changes. Recipes make their choices
on a validation split carved from train (``RecipeContext.val``); accuracy is on the test split.

    python benchmarks/seeds.py                        # every figure, seeds 0 1 2, markdown out
    python benchmarks/seeds.py --only dc-lenet300 ttq --seeds 0 1 2 3
    python benchmarks/seeds.py --out benchmarks/results/seeds.md
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_header  # noqa: E402


def _data():
    from penjing.data import digits

    return digits()


def _recipe(name: str, model_name: str) -> Callable[[int], dict]:
    """A shipped recipe, as ``penjing compress --recipe NAME --seed S`` runs it."""

    def run(seed: int) -> dict:
        from penjing.models import pretrained
        from penjing.recipe import RecipeContext, load_recipe, run_recipe
        from penjing.recipe.schema import builtin_recipe

        train, test = _data()
        model = pretrained(model_name, train, progress=False)
        with tempfile.TemporaryDirectory() as out:
            ctx = RecipeContext(train=train, test=test, out_dir=Path(out), progress=False, echo=False, seed=seed)
            result = run_recipe(load_recipe(builtin_recipe(name)), model, ctx)
        return {"dense": result.summaries[0].accuracy, "final": result.final.accuracy,
                "ratio": result.final.ratio}

    return run


def _quantize(model_name: str, bits: int, mode: str) -> Callable[[int], dict]:
    """``penjing quantize --model M --bits B --mode MODE``: float -> int8-kernel accuracy."""

    def run(seed: int) -> dict:
        from penjing.models import pretrained
        from penjing.quantization import QuantConfig, convert, qat_fit, quantize
        from penjing.train import evaluate

        train, test = _data()
        model = copy.deepcopy(pretrained(model_name, train, progress=False))
        dense = evaluate(model, test)
        config = QuantConfig(bits=bits, mode=mode)
        if mode == "qat":
            qat_fit(model, config, train, seed=seed, progress=False)
        else:  # PTQ calibrates on the first samples: the seed changes nothing (shown as such)
            quantize(model, config, data=train, progress=False)
        if bits == 8:
            convert(model)
        return {"dense": dense, "final": evaluate(model, test)}

    return run


def _lowrank(model_name: str) -> Callable[[int], dict]:
    """``penjing lowrank --model M --params 0.5 --seed S`` (5 epochs at lr 3e-4)."""

    def run(seed: int) -> dict:
        from penjing.low_rank import LowRankConfig, lowrank
        from penjing.models import pretrained
        from penjing.train import evaluate, fit

        train, test = _data()
        model = copy.deepcopy(pretrained(model_name, train, progress=False))
        dense = evaluate(model, test)
        lowrank(model, LowRankConfig(params=0.5), data=train, progress=False)
        fit(model, train, epochs=5, lr=3e-4, seed=seed, progress=False)
        return {"dense": dense, "final": evaluate(model, test)}

    return run


def _ternarize(model_name: str) -> Callable[[int], dict]:
    """``penjing ternarize --model M --algorithm ttq --seed S`` (10 epochs at lr 1e-3)."""

    def run(seed: int) -> dict:
        from penjing.lowbit import TernaryConfig, ternarize
        from penjing.models import pretrained
        from penjing.train import evaluate, fit

        train, test = _data()
        model = copy.deepcopy(pretrained(model_name, train, progress=False))
        dense = evaluate(model, test)
        ternarize(model, TernaryConfig(algorithm="ttq"), data=train, progress=False)  # as the CLI
        fit(model, train, epochs=10, lr=1e-3, seed=seed, progress=False)
        return {"dense": dense, "final": evaluate(model, test)}

    return run


FIGURES: dict[str, tuple[str, Callable[[int], dict]]] = {
    "dc-lenet300": ("Deep Compression, LeNet-300-100 (`penjing compress`)", _recipe("deep_compression", "lenet300")),
    "dc-lenet5": ("Deep Compression, LeNet-5 (`penjing compress --model lenet5`)",
                  _recipe("deep_compression_lenet5", "lenet5")),
    "prune": ("Iterative pruning to 8%, LeNet-300-100 (`penjing compress --recipe iterative_pruning`)",
              _recipe("iterative_pruning", "lenet300")),
    **{f"ptq8-{m}": (f"PTQ W8A8 + int8 kernels, {m} (`penjing quantize --model {m}`)", _quantize(m, 8, "ptq"))
       for m in ("lenet300", "lenet5", "resnet")},
    **{f"qat4-{m}": (f"QAT W4, {m} (`penjing quantize --model {m} --bits 4 --mode qat`)", _quantize(m, 4, "qat"))
       for m in ("lenet300", "lenet5", "resnet")},
    **{f"lowrank-{m}": (f"Low-rank at 50% params, {m} (`penjing lowrank --model {m} --params 0.5`)", _lowrank(m))
       for m in ("lenet300", "lenet5", "resnet")},
    **{f"ttq-{m}": (f"TTQ, {m} (`penjing ternarize --model {m} --algorithm ttq`)", _ternarize(m))
       for m in ("lenet5", "resnet")},
}


def _span(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}-{fmt.format(hi)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="+", choices=sorted(FIGURES), help="run only these figures")
    ap.add_argument("--out", help="also write the markdown table here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = args.only or list(FIGURES)
    lines = [machine_header(f"python benchmarks/seeds.py --seeds {' '.join(map(str, args.seeds))}"), "",
             "| figure | dense | final (range over seeds) | per seed | size ratio | s/run |",
             "|---|---:|---:|---|---:|---:|"]
    for name in names:
        title, run = FIGURES[name]
        results, t0 = [], time.time()
        for seed in args.seeds:
            results.append(run(seed))
            print(f"{name} seed {seed}: {results[-1]}", file=sys.stderr, flush=True)
        per_seed = " / ".join(f"{100 * r['final']:.2f}" for r in results)
        ratio = _span([r["ratio"] for r in results], "{:.1f}x") if "ratio" in results[0] else ""
        lines.append(f"| {title} | {_span([100 * r['dense'] for r in results], '{:.2f}%')} | "
                     f"{_span([100 * r['final'] for r in results], '{:.2f}%')} | {per_seed} | {ratio} | "
                     f"{(time.time() - t0) / len(results):.0f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
