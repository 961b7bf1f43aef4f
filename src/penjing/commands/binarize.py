"""``penjing binarize``: BinaryConnect / XNOR binary weights on a model, fine-tuned and measured."""

from __future__ import annotations

import argparse

from penjing.commands._common import add_model_args
from penjing.commands.ternarize import add_lowbit_args

EXAMPLES = """\
examples:
  penjing binarize --model lenet5 --method xnor              # alpha per output channel
  penjing binarize --model lenet5 --method binaryconnect --stochastic
  penjing binarize --model lenet5 --activations fc1          # fc1 also sees binary inputs
  penjing binarize --model resnet --out resnet_bin.pt        # packed 1-bit file
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "binarize", help="binary weights (BinaryConnect, XNOR scaling), fine-tuned",
        description="Binarize a model's Linear/Conv weights (sign, with optional XNOR scale), "
        "fine-tune with the straight-through estimator, and print accuracy and the packed "
        "size (1 bit per weight).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p, default="lenet5")
    p.add_argument("--method", choices=["binaryconnect", "xnor"], default="xnor", help="default: xnor")
    p.add_argument("--scaling", choices=["none", "tensor", "channel"],
                   help="override the method's scale (binaryconnect: none, xnor: channel)")
    p.add_argument("--stochastic", action="store_true", help="stochastic sign while training")
    p.add_argument("--activations", nargs="+", default=[],
                   help="layers whose inputs are binarized too (XNOR-Net)")
    add_lowbit_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import penjing as pj
    from penjing.commands._common import load_model_and_data
    from penjing.commands.ternarize import finish
    from penjing.lowbit import BinaryConfig, binarize

    config = BinaryConfig(method=args.method, scaling=args.scaling, stochastic=args.stochastic,
                          activations=args.activations, layers=args.layers, exclude=args.exclude,
                          keep_first_last=not args.all_layers)
    model, train, test = load_model_and_data(args)
    before = pj.evaluate(model, test)
    binarize(model, config)
    return finish(args, model, train, test, before, entropy=False)
