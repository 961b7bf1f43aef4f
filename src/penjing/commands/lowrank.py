"""``penjing lowrank``: factorise a model's layers (SVD, conv split), fine-tune, report."""

from __future__ import annotations

import argparse
import json

from penjing.commands._common import add_model_args, load_model_and_data, out_dir

EXAMPLES = """\
examples:
  penjing lowrank --params 0.5                         # LeNet-300-100 at half the parameters
  penjing lowrank --model lenet5 --energy 0.9          # keep 90% of each layer's spectrum energy
  penjing lowrank --model resnet --flops 0.6 --method tucker
  penjing lowrank --model lenet5 --rank 8 --method spatial --exclude conv1
  penjing lowrank --model lenet300 --curve 0.2,0.3,0.4,0.5,0.7   # accuracy vs parameters
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lowrank", help="low-rank factorisation: Linear by SVD, conv split in two (or Tucker-2)",
        description="Replace layers by low-rank factors (rank per layer, by spectrum energy, or "
        "chosen together for a parameter/MAC budget), fine-tune, and print per layer the rank, "
        "parameters and MACs before/after and the relative error. Writes the spectrum plot, the "
        "table, the ranks and the fine-tuned state_dict to --out.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--params", type=float, help="fraction of the model's parameters to keep (default 0.5)")
    rule.add_argument("--flops", type=float, help="fraction of the model's multiply-accumulates to keep")
    rule.add_argument("--energy", type=float, help="per layer, keep this fraction of the squared singular values")
    rule.add_argument("--rank", type=int, help="the same explicit rank in every selected layer")
    p.add_argument("--method", default="channel", choices=["channel", "spatial", "tucker", "cp"],
                   help="how convs are split (default: channel); Linear layers always use SVD")
    p.add_argument("--layers", nargs="+", help="name globs of the layers to factorise (default: all)")
    p.add_argument("--exclude", nargs="+", default=(), help="name globs of layers to leave alone")
    p.add_argument("--sensitivity", action="store_true",
                   help="weight each layer's error by its loss sensitivity measured on the data")
    p.add_argument("--refine", action="store_true", help="refine Tucker-2 by HOOI (needs tensorly)")
    p.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs (default: 5)")
    p.add_argument("--lr", type=float, default=3e-4, help="fine-tuning learning rate (default: 3e-4)")
    p.add_argument("--curve", help="comma-separated parameter budgets: fine-tune a copy at each and "
                   "plot accuracy vs parameters instead of a single run")
    p.add_argument("--out", default="out/lowrank", help="output folder (default: out/lowrank)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _config(args):
    from penjing.low_rank import LowRankConfig

    return LowRankConfig(rank=args.rank, energy=args.energy, params=args.params, flops=args.flops,
                         method=args.method, layers=args.layers, exclude=tuple(args.exclude),
                         sensitivity=args.sensitivity, refine=args.refine)


def run(args: argparse.Namespace) -> int:
    config = _config(args)  # validate before loading (or training) anything
    if args.epochs < 0:
        raise ValueError(f"--epochs must be >= 0, got {args.epochs}")
    model, train, test = load_model_and_data(args)
    folder = out_dir(args.out)
    if args.curve:
        return _curve(args, config, model, train, test, folder)

    from rich.console import Console

    from penjing.low_rank import decompose_model
    from penjing.models.user import save_state_dict
    from penjing.train import evaluate, fit

    dense = evaluate(model, test)
    result = decompose_model(model, config, data=train)
    decomposed = evaluate(model, test)
    console = Console(width=max(Console().width, 150))
    console.print(result.table())
    from penjing.low_rank.report import totals

    print(totals(result))
    fit(model, train, epochs=args.epochs, lr=args.lr, seed=args.seed, progress=not args.no_progress,
        desc="fine-tune low-rank")
    tuned = evaluate(model, test)
    print(f"accuracy: dense {100 * dense:.2f}% -> factorised {100 * decomposed:.2f}% -> fine-tuned "
          f"({args.epochs} epochs) {100 * tuned:.2f}% ({100 * (tuned - dense):+.2f} points)")
    plot = result.plot_spectra(folder / "spectra.png")
    (folder / "lowrank.md").write_text(
        f"# penjing lowrank: {args.model}\n\n{result.to_markdown()}\n"
        f"accuracy: dense {100 * dense:.2f}%, factorised {100 * decomposed:.2f}%, "
        f"fine-tuned {100 * tuned:.2f}%\n\n![spectra]({plot.name})\n")
    ranks = {name: list(r) if isinstance(r, tuple) else r for name, r in result.ranks.items()}
    (folder / "ranks.json").write_text(json.dumps({"method": args.method, "rank": ranks}, indent=2))
    save_state_dict(model.state_dict(), folder / "model.safetensors")
    print(f"wrote {plot}, {folder / 'lowrank.md'}, {folder / 'ranks.json'}, {folder / 'model.safetensors'}")
    return 0


def _curve(args, config, model, train, test, folder) -> int:
    from penjing.low_rank import accuracy_curve
    from penjing.low_rank.curve import curve_markdown, plot_curve

    try:
        budgets = [float(b) for b in args.curve.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"--curve takes comma-separated fractions like 0.2,0.5; got {args.curve!r}") from None
    if not budgets:
        raise ValueError("--curve needs at least one budget")
    dense, points = accuracy_curve(model, train, test, budgets, config=config, epochs=args.epochs,
                                   lr=args.lr, seed=args.seed, progress=not args.no_progress)
    table = curve_markdown(dense, points, sum(p.numel() for p in model.parameters()))
    print(table)
    plot = plot_curve({args.model: (dense, points)}, folder / "accuracy_vs_params.png")
    (folder / "curve.md").write_text(f"# accuracy vs parameters: {args.model}\n\n{table}\n![curve]({plot.name})\n")
    print(f"wrote {plot}, {folder / 'curve.md'}")
    return 0
