"""``penjing prune``: prune a model (or analyse its per-layer sensitivity) and print the table."""

from __future__ import annotations

import argparse
import copy

from penjing.commands._common import add_model_args, load_model_and_data, out_dir

EXAMPLES = """\
examples:
  penjing prune --sparsity 0.92 --scope global --schedule iterative --rounds 6 --finetune-epochs 10
                                                  # Han et al.: LeNet-300-100 keeps 8% of its weights
  penjing prune --sparsity fc1=0.93,fc2=0.92,fc3=0.75 --schedule iterative --finetune-epochs 5
  penjing prune --quality 1.5 --finetune-epochs 5  # Han's threshold: |w| < 1.5 x std of the layer
  penjing prune --granularity 2:4 --finetune-epochs 3
  penjing prune --model resnet --granularity channel --sparsity 0.5 --layers Conv2d --finetune-epochs 5
  penjing prune --sparsity 0.9 --schedule polynomial --finetune-epochs 20   # Zhu & Gupta, during training
  penjing prune --sensitivity --tolerance 0.5      # prune each layer alone; suggest per-layer sparsities
"""


def _sparsity(text: str) -> float | dict[str, float]:
    """``0.9`` or ``fc1=0.93,fc2=0.9`` (layer glob = sparsity)."""
    try:
        if "=" not in text:
            return float(text)
        pairs = (item.split("=", 1) for item in text.split(",") if item.strip())
        return {key.strip(): float(value) for key, value in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--sparsity takes a fraction (0.9) or layer=fraction pairs (fc1=0.93,fc2=0.9), got {text!r}"
        ) from None


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


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
    p.add_argument("--sparsity", type=_sparsity,
                   help="fraction of weights (filters, for channel) to remove, in [0, 1), or "
                   "per layer: fc1=0.93,fc2=0.9 (layers no key names stay dense)")
    p.add_argument("--quality", type=float, help="instead of --sparsity: prune |w| < QUALITY x std "
                   "of the layer's weights (Han et al. 2015)")
    p.add_argument("--criterion", default="magnitude", help="magnitude, l1 or l2 (default: magnitude)")
    p.add_argument("--scope", default="per-layer", help="per-layer or global (one threshold for all)")
    p.add_argument("--granularity", default="unstructured",
                   help="unstructured, N:M (e.g. 2:4) or channel/filter (physically smaller layers)")
    p.add_argument("--schedule", default="one-shot", help="one-shot, iterative or polynomial")
    p.add_argument("--rounds", type=int, default=4, help="iterative: prune+fine-tune rounds (default: 4)")
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="epochs of fine-tuning (per round for iterative; the whole run for polynomial)")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (default: 1e-3)")
    p.add_argument("--layers", help="comma-separated layer globs or types (default: every Linear/Conv)")
    p.add_argument("--exclude", help="comma-separated layer globs or types to leave alone")
    p.add_argument("--sensitivity", action="store_true",
                   help="analyse: prune each layer alone at --sparsities and suggest per-layer sparsities")
    p.add_argument("--sparsities", type=_floats, default=None,
                   help="sensitivity: sparsities to try (default: 0.1,...,0.9,0.95)")
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="sensitivity: accuracy drop (points) allowed per layer (default: 1.0)")
    p.add_argument("--out", default="out/prune", help="folder for plots and the pruned state_dict")
    p.add_argument("--seed", type=int, default=0, help="seed for fine-tuning (default: 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.sensitivity:
        return _sensitivity(args)

    from penjing.core.params import bake
    from penjing.models.user import save_state_dict
    from penjing.pruning import PruneConfig, prune
    from penjing.pruning.report import rounds_plot
    from penjing.report.plots import sparsity_per_layer
    from penjing.report.summary import summary
    from penjing.train import evaluate

    config = PruneConfig(
        sparsity=args.sparsity, quality=args.quality, criterion=args.criterion, scope=args.scope,
        granularity=args.granularity, schedule=args.schedule, rounds=args.rounds,
        finetune_epochs=args.finetune_epochs, lr=args.lr, layers=_names(args.layers),
        exclude=_names(args.exclude) or (),
    )
    model, train, test = load_model_and_data(args)
    dense = copy.deepcopy(model)
    before = evaluate(model, test)
    rounds = []

    def log(info) -> None:
        rounds.append(info)
        print(f"round {info.round}/{info.rounds}: {100 * info.kept:.2f}% of {info.params:,} weights "
              f"kept, accuracy {100 * info.accuracy:.2f}%")

    prune(model, config, train, test=test, seed=args.seed, progress=not args.no_progress, log=log)
    after = evaluate(model, test)
    table = summary(model, test, title=f"{args.model} pruned ({config.granularity}, {config.schedule})")
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
          f"parameters {dense_params:,} -> {params:,} ({dense_params / params:.2f}x fewer)")
    out = out_dir(args.out)
    rounds_plot(rounds, out / "prune_rounds.png", before)
    sparsity_per_layer(model, out / "sparsity_per_layer.png")
    bake(model)  # plain tensors (safetensors) that load into the (smaller) model
    save_state_dict(model.state_dict(), out / "pruned.safetensors")
    print(f"wrote {out / 'pruned.safetensors'}, {out / 'prune_rounds.png'}, {out / 'sparsity_per_layer.png'}")
    return 0


def _sensitivity(args: argparse.Namespace) -> int:
    from penjing.pruning import sensitivity
    from penjing.pruning.sensitivity import DEFAULT_SPARSITIES

    model, _train, test = load_model_and_data(args)
    out = out_dir(args.out)
    result = sensitivity(model, test, sparsities=args.sparsities or DEFAULT_SPARSITIES,
                         layers=_names(args.layers), exclude=_names(args.exclude) or (),
                         criterion=args.criterion, granularity=args.granularity,
                         plot=out / "sensitivity.png", tolerance=args.tolerance)
    print(result.to_markdown(args.tolerance))
    suggested = ",".join(f"{k}={v:g}" for k, v in result.suggest(args.tolerance).items())
    print(f"suggested: penjing prune --model {args.model} --sparsity {suggested}")
    print(f"wrote {out / 'sensitivity.png'}")
    return 0
