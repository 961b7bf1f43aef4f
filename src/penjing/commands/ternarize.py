"""``penjing ternarize``: TTQ / TWN ternary weights on a model, fine-tuned and measured."""

from __future__ import annotations

import argparse

from penjing.commands._common import add_model_args, load_model_and_data

EXAMPLES = """\
examples:
  penjing ternarize --model lenet5 --algorithm ttq           # t = 0.05, 10 epochs fine-tuning
  penjing ternarize --model resnet --algorithm twn --epochs 15
  penjing ternarize --model lenet5 --threshold 0.1 --out lenet5_ttq.pjz
  penjing ternarize --model lenet5 --no-keep-first-last      # first/last layers too
  penjing ternarize --threshold 'fc1=0.1,*=0.05'             # per layer, first match wins
"""


def register(sub: argparse._SubParsersAction) -> None:
    from penjing.core.cli_config import add_config_flags
    from penjing.lowbit import TernaryConfig

    p = sub.add_parser(
        "ternarize", help="ternary weights {-Wn, 0, +Wp} (TTQ, TWN), fine-tuned",
        description="Ternarize a model's Linear/Conv/Embedding weights with Trained Ternary "
        "Quantization (learned scales) or Ternary Weight Networks, fine-tune, and print "
        "accuracy, sparsity and the stored size (the .pjz codec: a 3-value codebook per weight).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p, default="lenet5")
    add_config_flags(p, TernaryConfig)
    add_finetune_args(p)
    p.set_defaults(func=run)


def add_finetune_args(p: argparse.ArgumentParser) -> None:
    """Command-level arguments shared with ``penjing binarize``."""
    p.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs (default: 10)")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (default: 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the model with penjing.save (the .pjz file; load it "
                   "with penjing.load / penjing eval)")


def finish(args: argparse.Namespace, model, train, test, before: float, stochastic: bool) -> int:
    """Fine-tune, print the per-layer table and storage, and write ``--out``."""
    import penjing as pj
    from penjing.lowbit import recalibrate_batchnorm, ternary_sparsity
    from penjing.lowbit.report import storage

    converted = pj.evaluate(model, test)
    pj.fit(model, train, epochs=args.epochs, lr=args.lr, seed=args.seed,
           progress=not args.no_progress, desc=args.command)
    if stochastic and args.epochs > 0:
        # BatchNorm statistics were gathered under random signs; evaluation uses the sign
        recalibrate_batchnorm(model, train)
    result = pj.summary(model, test, title=f"{args.model} after {args.command}")
    zeros = ternary_sparsity(model)
    if zeros:
        result.extra_columns["zeros %"] = [
            f"{100 * zeros[r.name]:.1f}" if r.name in zeros else "" for r in result.rows]
    print(result)
    size = storage(model)
    print(f"accuracy {100 * before:.2f}% full precision -> {100 * converted:.2f}% converted -> "
          f"{100 * result.accuracy:.2f}% after {args.epochs} epochs")
    print(f"stored (.pjz codec): low-bit weights {size.lowbit_ratio:.1f}x smaller than float32; "
          f"whole model {size.fp32_bytes:,} B -> {size.packed_bytes:,} B ({size.ratio:.1f}x)")
    if args.out:
        info = pj.save(model, args.out)
        print(f"wrote {args.out}: {info.bytes:,} B ({size.fp32_bytes / info.bytes:.1f}x smaller "
              "than float32)")
    return 0


def check_epochs(args: argparse.Namespace) -> None:
    if args.epochs < 0:
        raise ValueError(f"--epochs must be >= 0, got {args.epochs}")


def run(args: argparse.Namespace) -> int:
    import penjing as pj
    from penjing.core.cli_config import config_from_args
    from penjing.core.report import last_report
    from penjing.lowbit import TernaryConfig, ternarize

    config = config_from_args(TernaryConfig, args)  # validate before loading anything
    check_epochs(args)
    model, train, test = load_model_and_data(args)
    before = pj.evaluate(model, test)
    ternarize(model, config)
    print(last_report(model))
    return finish(args, model, train, test, before, stochastic=False)
