"""``penjing lowrank``: factorise a model's layers (SVD, conv split), fine-tune, report."""

from __future__ import annotations

import argparse
import json

from penjing.commands._common import (
    add_model_args,
    add_tolerance_args,
    check_accuracy,
    load_model_and_data,
    max_drop,
    out_dir,
)

EXAMPLES = """\
examples:
  penjing lowrank --params 0.5                         # LeNet-300-100 at half the weights
  penjing lowrank --model lenet5 --energy 0.9          # keep 90% of each layer's spectrum energy
  penjing lowrank --model resnet --flops 0.6 --conv-method tucker
  penjing lowrank --model lenet5 --rank 8 --conv-method spatial --exclude conv1
  penjing lowrank --rank 'fc1=64,fc3=8,*=16'           # per layer, first match wins
  penjing lowrank --model lenet300 --curve 0.2,0.3,0.4,0.5,0.7   # accuracy vs parameters
"""


def register(sub: argparse._SubParsersAction) -> None:
    from penjing.core.cli_config import add_config_flags
    from penjing.low_rank import LowRankConfig

    p = sub.add_parser(
        "lowrank", help="low-rank factorisation: Linear by SVD, conv split in two (or Tucker-2)",
        description="Replace layers by low-rank factors (rank per layer, by spectrum energy, or "
        "chosen together for a parameter/MAC budget over the factorisable layers), fine-tune, "
        "and print per layer the rank, parameters and MACs before/after and the relative error. "
        "Writes the spectrum plot, the table, the ranks and the fine-tuned model (.pjz) to --out.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    add_config_flags(p, LowRankConfig)
    p.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs (default: 5)")
    p.add_argument("--lr", type=float, default=3e-4, help="fine-tuning learning rate (default: 3e-4)")
    p.add_argument("--curve", help="comma-separated parameter budgets: fine-tune a copy at each and "
                   "plot accuracy vs parameters instead of a single run")
    p.add_argument("--out", default="out/lowrank", help="output folder (default: out/lowrank)")
    p.add_argument("--seed", type=int, default=0, help="fine-tuning seed (default: 0)")
    add_tolerance_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from penjing.core.cli_config import config_from_args
    from penjing.low_rank import LowRankConfig

    config = config_from_args(LowRankConfig, args)  # validate before loading (or training) anything
    if args.epochs < 0:
        raise ValueError(f"--epochs must be >= 0, got {args.epochs}")
    max_drop(args)
    model, train, test = load_model_and_data(args)
    folder = out_dir(args.out)
    if args.curve:
        return _curve(args, config, model, train, test, folder)

    from rich.console import Console

    import penjing as pj
    from penjing.core.report import dense_fp32_bytes, last_report, size_line
    from penjing.low_rank import lowrank
    from penjing.low_rank.report import totals
    from penjing.train import evaluate, fit

    dense = evaluate(model, test)
    original = dense_fp32_bytes(model)
    lowrank(model, config, data=train, progress=not args.no_progress)
    report = last_report(model)
    result = report.extra["plan"]
    decomposed = evaluate(model, test)
    console = Console(width=max(Console().width, 150))
    console.print(result.table())
    print(totals(result))
    for skip in report.skipped:
        print(f"skipped {skip.name} ({skip.kind}): {skip.reason}")
    fit(model, train, epochs=args.epochs, lr=args.lr, seed=args.seed, progress=not args.no_progress,
        desc="fine-tune low-rank")
    tuned = evaluate(model, test)
    warning = check_accuracy(args, f"low-rank factorisation + {args.epochs} fine-tuning epochs", dense, tuned)
    print(f"accuracy: dense {100 * dense:.2f}% -> factorised {100 * decomposed:.2f}% -> fine-tuned "
          f"({args.epochs} epochs) {100 * tuned:.2f}% ({100 * (tuned - dense):+.2f} points)")
    plot = result.plot_spectra(folder / "spectra.png")
    (folder / "lowrank.md").write_text(
        f"# penjing lowrank: {args.model}\n\n{result.to_markdown()}\n"
        f"accuracy: dense {100 * dense:.2f}%, factorised {100 * decomposed:.2f}%, "
        f"fine-tuned {100 * tuned:.2f}%\n\n" + (f"> **{warning}**\n\n" if warning else "")
        + f"![spectra]({plot.name})\n")
    ranks = {name: list(r) if isinstance(r, tuple) else r for name, r in result.ranks.items()}
    (folder / "ranks.json").write_text(json.dumps({"conv_method": config.conv_method, "rank": ranks},
                                                  indent=2, default=str))
    info = pj.save(model, folder / "model.pjz")
    print(size_line(original, info.bytes, "file"))
    if warning:
        print(warning)
    print(f"wrote {plot}, {folder / 'lowrank.md'}, {folder / 'ranks.json'}, {folder / 'model.pjz'} "
          f"({info.bytes:,} B)")
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
