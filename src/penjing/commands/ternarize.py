"""``penjing ternarize``: TTQ / TWN ternary weights on a model, fine-tuned and measured."""

from __future__ import annotations

import argparse

from penjing.commands._common import (
    add_model_args,
    add_tolerance_args,
    check_accuracy,
    load_model_and_data,
    max_drop,
)

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
    p.add_argument("--seed", type=int, default=0, help="fine-tuning seed (default: 0)")
    p.add_argument("--out", help="write the model with penjing.save (the .pjz file; load it "
                   "with penjing.load / penjing eval; default: not written)")
    add_tolerance_args(p)


def finish(args: argparse.Namespace, model, train, test, before: float, stochastic: bool,
           original: int) -> int:
    """Fine-tune, print the per-layer table and storage, and write ``--out``; ``original`` is
    the dense float32 bytes of the model before the conversion (the ratio's reference)."""
    import penjing as pj
    from penjing.core.report import size_line
    from penjing.lowbit import recalibrate_batchnorm, ternary_sparsity
    from penjing.lowbit.report import storage

    converted = pj.evaluate(model, test)
    pj.fit(model, train, epochs=args.epochs, lr=args.lr, seed=args.seed,
           progress=not args.no_progress, desc=args.command)
    if stochastic and args.epochs > 0:
        # BatchNorm statistics were gathered under random signs; evaluation uses the sign
        recalibrate_batchnorm(model, train)
    result = pj.summary(model, test, title=f"{args.model} after {args.command}", original=original)
    warning = check_accuracy(args, f"{args.command} + {args.epochs} fine-tuning epochs", before,
                             result.accuracy, result)
    zeros = ternary_sparsity(model)
    if zeros:
        result.extra_columns["zeros %"] = [
            f"{100 * zeros[r.name]:.1f}" if r.name in zeros else "" for r in result.rows]
    print(result)
    size = storage(model)
    print(f"accuracy {100 * before:.2f}% full precision -> {100 * converted:.2f}% converted -> "
          f"{100 * result.accuracy:.2f}% after {args.epochs} epochs")
    lowbit = sum(r.packed_bytes for r in size.layers)
    if args.out:
        info = pj.save(model, args.out)
        print(size_line(original, info.bytes, "file"))
        print(f"wrote {args.out}: {info.bytes:,} B, of which {lowbit:,} B are the low-bit weights' payload")
    else:  # the codec's payload without the file's framing (no file was written)
        print(size_line(original, size.packed_bytes, "payload, estimated"))
        print(f"of which {lowbit:,} B are the low-bit weights' payload; --out writes the file")
    if warning:
        print(warning)
    return 0


def check_epochs(args: argparse.Namespace) -> None:
    if args.epochs < 0:
        raise ValueError(f"--epochs must be >= 0, got {args.epochs}")
    max_drop(args)


def run(args: argparse.Namespace) -> int:
    import penjing as pj
    from penjing.core.cli_config import config_from_args
    from penjing.core.report import dense_fp32_bytes, last_report
    from penjing.lowbit import TernaryConfig, ternarize

    config = config_from_args(TernaryConfig, args)  # validate before loading anything
    check_epochs(args)
    model, train, test = load_model_and_data(args)
    before = pj.evaluate(model, test)
    original = dense_fp32_bytes(model)
    ternarize(model, config)
    print(last_report(model))
    return finish(args, model, train, test, before, stochastic=False, original=original)
