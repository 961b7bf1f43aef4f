"""``penjing binarize``: BinaryConnect / XNOR binary weights on a model, fine-tuned and measured."""

from __future__ import annotations

import argparse

from penjing.commands._common import add_model_args
from penjing.commands.ternarize import add_finetune_args

EXAMPLES = """\
examples:
  penjing binarize --model lenet5 --algorithm xnor           # alpha per output channel
  penjing binarize --model lenet5 --algorithm binaryconnect --stochastic
  penjing binarize --model lenet5 --activations fc1          # fc1 also sees binary inputs
  penjing binarize --model resnet --out resnet_bin.pjz       # 1 bit per weight in the file
"""


def register(sub: argparse._SubParsersAction) -> None:
    from penjing.core.cli_config import add_config_flags
    from penjing.lowbit import BinaryConfig

    p = sub.add_parser(
        "binarize", help="binary weights (BinaryConnect, XNOR scaling), fine-tuned",
        description="Binarize a model's Linear/Conv/Embedding weights (sign, with optional XNOR "
        "scale), fine-tune with the straight-through estimator, and print accuracy and the "
        "stored size (the .pjz codec: 1 bit per weight).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p, default="lenet5")
    add_config_flags(p, BinaryConfig)
    add_finetune_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import penjing as pj
    from penjing.commands._common import load_model_and_data
    from penjing.commands.ternarize import check_epochs, finish
    from penjing.core.cli_config import config_from_args
    from penjing.core.report import dense_fp32_bytes, last_report
    from penjing.lowbit import BinaryConfig, binarize

    config = config_from_args(BinaryConfig, args)
    check_epochs(args)
    model, train, test = load_model_and_data(args)
    before = pj.evaluate(model, test)
    original = dense_fp32_bytes(model)
    binarize(model, config)
    print(last_report(model))
    return finish(args, model, train, test, before, stochastic=config.stochastic, original=original)
