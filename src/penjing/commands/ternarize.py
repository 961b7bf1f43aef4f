"""``penjing ternarize``: TTQ / TWN ternary weights on a model, fine-tuned and measured."""

from __future__ import annotations

import argparse

from penjing.commands._common import add_model_args, load_model_and_data

EXAMPLES = """\
examples:
  penjing ternarize --model lenet5 --method ttq              # t = 0.05, 10 epochs fine-tuning
  penjing ternarize --model resnet --method twn --epochs 15
  penjing ternarize --model lenet5 --threshold 0.1 --out lenet5_ttq.pt   # packed 2-bit file
  penjing ternarize --model lenet5 --all-layers --entropy     # first/last too; entropy-coded
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ternarize", help="ternary weights {-Wn, 0, +Wp} (TTQ, TWN), fine-tuned",
        description="Ternarize a model's Linear/Conv weights with Trained Ternary Quantization "
        "(learned scales) or Ternary Weight Networks, fine-tune, and print accuracy, sparsity "
        "and the packed size (2 bits per weight).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p, default="lenet5")
    p.add_argument("--method", choices=["ttq", "twn"], default="ttq", help="default: ttq")
    p.add_argument("--threshold", type=float, default=None,
                   help="TTQ: t in (0, 1) of max|W| (default 0.05); TWN: factor of mean|W| (0.7)")
    add_lowbit_args(p)
    p.add_argument("--entropy", action="store_true",
                   help="entropy-code the ternary codes in --out instead of 2-bit packing")
    p.set_defaults(func=run)


def add_lowbit_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared with ``penjing binarize``."""
    p.add_argument("--layers", nargs="+", help="layer names/globs/types (default: every Linear/Conv)")
    p.add_argument("--exclude", nargs="+", default=[], help="layers to leave full precision")
    p.add_argument("--all-layers", action="store_true",
                   help="convert the first and last layers too (kept full precision by default)")
    p.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs (default: 10)")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (default: 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the model: FILE.pjz = penjing's compressed file (penjing.save; "
                   "load with penjing.load / penjing eval), any other name = the low-bit pack "
                   "(penjing.lowbit.pack: a torch.save of tensors, load with weights_only=True)")


def finish(args: argparse.Namespace, model, train, test, before: float, entropy: bool) -> int:
    """Fine-tune, print the per-layer table and storage, and write ``--out``."""
    import torch

    import penjing as pj
    from penjing.lowbit import pack, recalibrate_batchnorm, ternary_sparsity
    from penjing.lowbit.report import storage

    if args.epochs < 0:
        raise ValueError(f"--epochs must be >= 0, got {args.epochs}")
    converted = pj.evaluate(model, test)
    pj.fit(model, train, epochs=args.epochs, lr=args.lr, seed=args.seed,
           progress=not args.no_progress, desc=args.command)
    if getattr(args, "stochastic", False) and args.epochs > 0:
        # BatchNorm statistics were gathered under random signs; evaluation uses the sign
        recalibrate_batchnorm(model, train)
    result = pj.summary(model, test, title=f"{args.model} after {args.command}")
    zeros = ternary_sparsity(model)
    if zeros:
        result.extra_columns["zeros %"] = [
            f"{100 * zeros[r.name]:.1f}" if r.name in zeros else "" for r in result.rows]
    print(result)
    size = storage(model, entropy=entropy)
    print(f"accuracy {100 * before:.2f}% full precision -> {100 * converted:.2f}% converted -> "
          f"{100 * result.accuracy:.2f}% after {args.epochs} epochs")
    print(f"packed: low-bit weights {size.lowbit_ratio:.1f}x smaller than float32; whole model "
          f"{size.fp32_bytes:,} B -> {size.packed_bytes:,} B ({size.ratio:.1f}x)")
    if args.out and args.out.endswith(".pjz"):
        info = pj.save(model, args.out)
        print(f"wrote {args.out}: {info.bytes:,} B ({size.fp32_bytes / info.bytes:.1f}x smaller than float32)")
    elif args.out:
        torch.save(pack(model, entropy=entropy), args.out)
        print(f"wrote {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    import penjing as pj
    from penjing.lowbit import TernaryConfig, ternarize

    config = TernaryConfig(method=args.method, threshold=args.threshold, layers=args.layers,
                           exclude=args.exclude, keep_first_last=not args.all_layers)
    model, train, test = load_model_and_data(args)
    before = pj.evaluate(model, test)
    ternarize(model, config)
    return finish(args, model, train, test, before, args.entropy)
