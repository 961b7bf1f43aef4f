"""``penjing eval FILE``: accuracy of a compressed file's weights on the bundled (or a local) data."""

from __future__ import annotations

import argparse

from penjing.commands import _pjz
from penjing.commands._common import FILE_MODEL_HELP

EXAMPLES = """\
examples:
  penjing eval out/model.pjz                       # LeNet-300-100 on the bundled digits
  penjing eval out/model.pjz --model lenet5
  penjing eval my.pjz --model my.py:MyNet --data mnist:~/data/mnist
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="test accuracy of the weights in a .pjz file",
        description="Load a .pjz file into the architecture named by --model (replaying the "
        "structural rewrites the file records: pruned channels, low-rank factors, split attention, "
        "Winograd, int8 layers) and measure its top-1 accuracy on the test split of --data.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", help="a .pjz file written by penjing")
    p.add_argument("--model", default="lenet300", help=FILE_MODEL_HELP + " (default: lenet300)")
    p.add_argument("--data", default="digits", help="digits (bundled), mnist:PATH or cifar10:PATH")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from penjing.data import get_data
    from penjing.models import MODELS, get_model
    from penjing.models.user import load_user_model
    from penjing.train import evaluate

    try:
        _pjz.read("eval", args.file, info=True)  # a damaged file is reported before any data is read
    except _pjz.FileProblem as problem:
        return _pjz.report(problem)
    train, test = get_data(args.data)
    if args.model in MODELS:
        model = get_model(args.model, train.tensors[0][:1])
    else:
        model = load_user_model(args.model, None)
    try:  # the file's structure record (pruned channels, factorised, int8 layers...) is replayed
        model = _pjz.load_into("eval", args.file, model, args.model, runtime="dense")
    except _pjz.FileProblem as problem:
        return _pjz.report(problem)
    accuracy = evaluate(model, test)
    print(f"{args.file}: {args.model} on {args.data}: accuracy {100 * accuracy:.2f}% "
          f"({len(test):,} test samples)")
    return 0
