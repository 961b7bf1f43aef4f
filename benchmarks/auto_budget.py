"""The main job on a user model: Deep Compression of examples/attention_net.py:AttentionNet
(8.8k parameters: embedding, depthwise conv, attention, LayerNorm, MLP) with the measured
pruning budget (deep_compression_auto.yaml, what `penjing compress --model X` runs), over
several seeds, against the role-based LeNet recipe (deep_compression.yaml) on the same weights.

The dense weights are trained once (`penjing train`'s loop, 30 epochs, seed 0) on the whole
digits training split, as `penjing train` does; each seed then holds out its own validation
split (10% of the training data, seeded) for the budget's choices, so the validation samples
were seen in training (a user's model usually has seen them too), and the test split gives
the reported figure.

    python benchmarks/auto_budget.py                        # seeds 0 1 2, markdown to stdout
    python benchmarks/auto_budget.py --seeds 0 --baseline   # also the LeNet recipe on seed 0

Seeds run in parallel processes (one torch thread each).
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def _dense(path: Path) -> None:
    """Train the user model once (the `penjing train` recipe of examples/attention_net.py)."""
    import torch

    from penjing.data import digits
    from penjing.models.user import load_user_model
    from penjing.train import fit

    torch.manual_seed(0)
    model = load_user_model(str(ROOT / "examples/attention_net.py") + ":AttentionNet", None)
    train, _ = digits()
    fit(model, train, epochs=30, seed=0, progress=False)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def _one(job: tuple[str, int, str]) -> dict:
    recipe_name, seed, weights = job
    import torch

    torch.set_num_threads(1)
    from penjing.core.sensitivity import measure
    from penjing.data import digits
    from penjing.models.user import load_user_model
    from penjing.recipe import RecipeContext, load_recipe, run_recipe
    from penjing.recipe.schema import builtin_recipe

    model = load_user_model(str(ROOT / "examples/attention_net.py") + ":AttentionNet", weights)
    train, test = digits()
    with tempfile.TemporaryDirectory() as out:
        ctx = RecipeContext(train=train, test=test, out_dir=Path(out), progress=False, echo=False,
                            seed=seed)
        dense_val = measure(model, ctx.val)
        result = run_recipe(load_recipe(builtin_recipe(recipe_name)), model, ctx)
        final_val = measure(result.model, ctx.val)
        return {"recipe": recipe_name, "seed": seed, "val_n": len(ctx.val),
                "dense_val": dense_val, "final_val": final_val,
                "dense_test": result.summaries[0].accuracy, "final_test": result.final.accuracy,
                "ratio": result.final.ratio,
                "sparsity": ctx.artifacts.get("prune_budget", {}).get("sparsity")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--baseline", action="store_true",
                        help="also run deep_compression.yaml (the LeNet-tuned roles) on each seed")
    args = parser.parse_args()
    from _machine import cpu_name

    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "attn.safetensors"
        _dense(weights)
        jobs = [("deep_compression_auto", s, str(weights)) for s in args.seeds]
        if args.baseline:
            jobs += [("deep_compression", s, str(weights)) for s in args.seeds]
        with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
            rows = pool.map(_one, jobs)
    print("# Deep Compression on a user model: the measured pruning budget\n")
    print("Command: `PYTHONPATH=src python benchmarks/auto_budget.py "
          f"{'--seeds ' + ' '.join(map(str, args.seeds))}{' --baseline' if args.baseline else ''}`.")
    print(f"Date: {datetime.date.today()}; CPU: {cpu_name()}; load: `{load}`.")
    print("Model: examples/attention_net.py:AttentionNet (8,864 parameters), trained 30 epochs on "
          "digits; val = each seed's held-out 10% of the training data (the budget's choices); "
          "test = the digits test split (the reported figure).\n")
    print("| recipe | seed | val dense % | val final % | val drop (pt) | test dense % | "
          "test final % | test drop (pt) | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['seed']} | {100 * r['dense_val']:.2f} | {100 * r['final_val']:.2f} | "
              f"{100 * (r['dense_val'] - r['final_val']):.2f} | {100 * r['dense_test']:.2f} | "
              f"{100 * r['final_test']:.2f} | {100 * (r['dense_test'] - r['final_test']):.2f} | "
              f"{r['ratio']:.1f}x |")
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        mine = [r for r in rows if r["recipe"] == recipe]
        vd = [100 * (r["dense_val"] - r["final_val"]) for r in mine]
        td = [100 * (r["dense_test"] - r["final_test"]) for r in mine]
        ratios = [r["ratio"] for r in mine]
        print(f"\n{recipe}: val drop {min(vd):.2f} to {max(vd):.2f} points, test drop "
              f"{min(td):.2f} to {max(td):.2f} points, ratio {min(ratios):.1f}x to {max(ratios):.1f}x "
              f"over seeds {', '.join(str(r['seed']) for r in mine)} (val: {mine[0]['val_n']} samples).")
    for r in rows:
        if r["sparsity"]:
            print(f"\nseed {r['seed']} per-layer sparsity: " +
                  ", ".join(f"{k} {100 * v:g}%" for k, v in r["sparsity"].items()))


if __name__ == "__main__":
    main()
