"""``penjing prune``: prune a model (or analyse its per-layer sensitivity) and print the table."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys

from penjing.commands._common import (
    add_model_args,
    add_tolerance_args,
    check_accuracy,
    load_model_and_data,
    max_drop,
    out_dir,
)
from penjing.core.cli_config import add_config_flags, config_from_args
from penjing.pruning.config import PruneConfig

EXAMPLES = """\
examples:
  penjing prune --sparsity 0.92 --scope global --schedule iterative --rounds 6 --finetune-epochs 10
                                                  # Han et al.: LeNet-300-100 keeps 8% of its weights
  penjing prune --sparsity 'first=0.93,last=0.75,*=0.92' --schedule iterative --finetune-epochs 5
  penjing prune --quality 1.5 --finetune-epochs 5  # Han's threshold: |w| < 1.5 x std of the layer
  penjing prune --granularity 2:4 --finetune-epochs 3
  penjing prune --model resnet --granularity channel --sparsity 0.5 --layers Conv2d --finetune-epochs 5
  penjing prune --sparsity 0.9 --schedule polynomial --finetune-epochs 20   # Zhu & Gupta, during training
  penjing prune --sensitivity --tolerance 0.5      # prune each layer alone; suggest per-layer sparsities
"""


#: ``penjing prune``'s fine-tuning epochs (the API's default is 0: prune only)
CLI_FINETUNE_EPOCHS = 10


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune", help="prune a model: unstructured, N:M or channel; one-shot, iterative or polynomial",
        description="Prune a model's weights (magnitude / L1 / L2), fine-tune with the training loop, "
        "and print the per-layer table (params, nonzeros, kept %, bytes) with the accuracy before "
        "and after. --sensitivity instead prunes each layer alone at several sparsities and "
        "suggests per-layer values.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    add_config_flags(p, PruneConfig)
    # The API prunes without training unless asked; a command line user who types
    # `penjing prune --sparsity 0.9` expects a usable model (measured, LeNet-300-100 on digits:
    # 97.78% -> 28.22% without fine-tuning, 96.22% after 10 epochs)
    p.set_defaults(finetune_epochs=CLI_FINETUNE_EPOCHS)
    p.add_argument("--no-finetune", dest="finetune_epochs", action="store_const", const=0,
                   help="prune only, no fine-tuning (the same as --finetune-epochs 0)")
    add_tolerance_args(p)
    p.add_argument("--sensitivity", action="store_true",
                   help="analyse: prune each layer alone at --sparsities and suggest per-layer sparsities")
    p.add_argument("--sparsities", type=_floats, default=None,
                   help="sensitivity: sparsities to try (default: 0.1,...,0.9,0.95)")
    p.add_argument("--out", default="out/prune", help="folder for plots and the pruned state_dict "
                   "(default: out/prune)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.sensitivity:
        return _sensitivity(args)

    from penjing.core.params import bake
    from penjing.core.report import last_report, size_line
    from penjing.models.user import save_state_dict
    from penjing.pruning import prune
    from penjing.pruning.report import rounds_plot
    from penjing.report.plots import sparsity_per_layer
    from penjing.report.summary import summary
    from penjing.train import evaluate

    try:
        config = config_from_args(PruneConfig, args)
        max_drop(args)
    except ValueError as exc:
        print(f"penjing prune: error: {exc}", file=sys.stderr)
        return 2
    model, train, test = load_model_and_data(args)
    dense = copy.deepcopy(model)
    before = evaluate(model, test)

    def log(m, info) -> None:
        info.accuracy = evaluate(m, test)
        print(f"round {info.round}/{info.rounds}: {100 * info.kept:.2f}% of {info.params:,} weights "
              f"kept, accuracy {100 * info.accuracy:.2f}%")

    config = dataclasses.replace(config, on_round=log, validation=test)
    prune(model, config, data=train, progress=not args.no_progress)
    rounds = last_report(model).extra["rounds"]
    after = evaluate(model, test)
    table = summary(model, test, title=f"{args.model} pruned ({config.granularity}, {config.schedule})",
                    original=dense)
    warning = check_accuracy(args, f"pruning ({config.finetune_epochs} fine-tuning epochs)", before, after, table)
    if config.structured:
        # Structured pruning changes shapes: show each layer's size before it.
        dense_rows = {r.name: r for r in summary(dense).rows}
        table.extra_columns["dense params"] = [
            f"{dense_rows[r.name].params:,}" if r.name in dense_rows else "" for r in table.rows]
    print(table)  # rendered by rich, as plain text (pipes and captures keep it)
    dense_params = sum(p.numel() for p in dense.parameters())
    params = sum(p.numel() for p in model.parameters())
    print(f"accuracy {100 * before:.2f}% -> {100 * after:.2f}% ({100 * (after - before):+.2f} points); "
          f"nonzero weights {100 * table.nonzeros / summary(dense).params:.2f}% of dense; "
          f"parameters {dense_params:,} -> {params:,}")
    print(size_line(table.reference_bytes, table.bytes, "estimated"))
    if warning:
        print(warning)
    out = out_dir(args.out)
    rounds_plot(rounds, out / "prune_rounds.png", before)
    sparsity_per_layer(model, out / "sparsity_per_layer.png")
    bake(model)  # plain tensors (safetensors) that load into the (smaller) model
    save_state_dict(model.state_dict(), out / "pruned.safetensors")
    print(f"wrote {out / 'pruned.safetensors'}, {out / 'prune_rounds.png'}, {out / 'sparsity_per_layer.png'}")
    return 0


def _sensitivity(args: argparse.Namespace) -> int:
    from penjing.pruning import sensitivity_scan
    from penjing.pruning.sensitivity import DEFAULT_SPARSITIES

    model, _train, test = load_model_and_data(args)
    out = out_dir(args.out)
    result = sensitivity_scan(model, test, sparsities=args.sparsities or DEFAULT_SPARSITIES,
                         layers=args.layers, exclude=args.exclude or (),
                         criterion=args.criterion, granularity=args.granularity,
                         plot=out / "sensitivity.png", tolerance=args.tolerance)
    print(result.to_markdown(args.tolerance))
    suggested = ",".join(f"{k}={v:g}" for k, v in result.suggest(args.tolerance).items() if v > 0)
    print(f"suggested: penjing prune --model {args.model} --sparsity {suggested}")
    print(f"wrote {out / 'sensitivity.png'}")
    return 0
