"""``penjing dsd``: Dense-Sparse-Dense training, with an optional same-budget dense baseline."""

from __future__ import annotations

import argparse

from penjing.commands._common import add_model_args
from penjing.commands.train import add_training_args, fresh_model, save_weights, training_kwargs

EXAMPLES = """\
examples:
  penjing dsd                                   # LeNet-300-100 on digits, 60 epochs: 20 dense, 20 at 50%, 20 re-dense
  penjing dsd --baseline                        # also train dense for the same 60 epochs and compare
  penjing dsd --sparsity 0.3 --phases 2,1,1 --epochs 40 --layers fc1,fc2
  penjing dsd --model lenet5 --precision bf16
"""


def _phases(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--phases takes three numbers like 1,1,1, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dsd", help="Dense-Sparse-Dense training: dense, prune and retrain sparse, restore and retrain",
        description="Train dense; keep the largest-magnitude weights (--sparsity pruned per layer) and "
        "retrain with the mask; restore the pruned connections at zero and retrain dense at "
        "lr x --redense-lr-scale. Prints the test accuracy after each phase.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    add_training_args(p, epochs=60, lr=1e-3)
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction pruned in the sparse phase (default: 0.5)")
    p.add_argument("--phases", type=_phases, default=(1.0, 1.0, 1.0),
                   help="shares of the budget for dense,sparse,re-dense (default: 1,1,1)")
    p.add_argument("--redense-lr-scale", type=float, default=0.1, help="re-dense lr factor (default: 0.1)")
    p.add_argument("--layers", help="comma-separated layer globs or types (default: every Linear/Conv)")
    p.add_argument("--baseline", action="store_true", help="also train the same model dense for the same budget")
    p.add_argument("--out", default="out/dsd/model.safetensors", help="where to write the DSD-trained state_dict")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from penjing.data import get_data
    from penjing.train import DSDConfig, evaluate, fit
    from penjing.train.dsd_schedule import phases_markdown

    layers = [n.strip() for n in args.layers.split(",") if n.strip()] if args.layers else None
    config = DSDConfig(sparsity=args.sparsity, phases=args.phases, redense_lr_scale=args.redense_lr_scale,
                       layers=layers)
    train, test = get_data(args.data)
    model = fresh_model(args.model, args.weights, train, args.seed)
    history = fit(model, train, test=test, dsd=config, desc="dsd", **training_kwargs(args))
    print(phases_markdown(history["phases"]))
    if args.baseline:
        dense = fresh_model(args.model, args.weights, train, args.seed)
        fit(dense, train, desc="dense baseline", **training_kwargs(args))
        base = evaluate(dense, test)
        print(f"dense, same budget: {100 * base:.2f}%; DSD: {100 * history['test_acc']:.2f}% "
              f"({100 * (history['test_acc'] - base):+.2f} points)")
    print(f"weights: {save_weights(model, args.out)}")
    return 0
