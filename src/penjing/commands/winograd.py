"""``penjing winograd``: swap a model's eligible convs for Winograd convs and show what changed."""

from __future__ import annotations

import argparse
import copy

from penjing.commands._common import (
    add_model_args,
    add_tolerance_args,
    check_accuracy,
    load_model_and_data,
    max_drop,
)

EXAMPLES = """\
examples:
  penjing winograd --model resnet               # SmallResNet on digits: table + accuracy check
  penjing winograd --model resnet --m 4         # F(4x4, 3x3) everywhere
  penjing winograd --model resnet --no-measure  # the cost model picks F(m) per layer
  penjing winograd --model my.py:MyNet --weights my.pt --tiles '[2, 4, 6]'
"""


def register(sub: argparse._SubParsersAction) -> None:
    from penjing.core.cli_config import add_config_flags
    from penjing.winograd_conv import WinogradConfig

    p = sub.add_parser(
        "winograd", help="compute 3x3/5x5 stride-1 convs with Winograd F(m x m, r x r)",
        description="Swap every eligible conv (stride 1, dilation 1, groups 1, 3x3 or 5x5) for a "
        "WinogradConv2d, print per layer the tile, the multiplications direct vs Winograd "
        "(transforms included) and why other layers were skipped, then check that the test "
        "accuracy is unchanged.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p, default="resnet")
    add_config_flags(p, WinogradConfig)
    p.add_argument("--batch", type=int, default=32,
                   help="batch of test images used as the example input (default: 32)")
    add_tolerance_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    import penjing as pj
    from penjing.core.cli_config import config_from_args
    from penjing.core.report import last_report
    from penjing.train import evaluate
    from penjing.winograd_conv import WinogradConfig

    config = config_from_args(WinogradConfig, args)
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    max_drop(args)
    model, _train, test = load_model_and_data(args)
    model.eval()
    original = copy.deepcopy(model)
    example = test.tensors[0][: args.batch]
    pj.winograd(model, config, example_inputs=example)
    report = last_report(model)
    plan = report.extra["plan"]
    console = Console(width=max(Console().width, 150))  # the table is wide; keep rows on one line
    if plan.layers:
        console.print(plan.rich_table())
    for skip in report.skipped:
        console.print(f"skipped {skip.name} ({skip.kind}): {skip.reason}")
    console.print(plan.summary_line())
    with torch.no_grad():
        x = test.tensors[0]
        before, after = original(x), model(x)
    acc_before, acc_after = evaluate(original, test), evaluate(model, test)
    same = (before.argmax(1) == after.argmax(1)).float().mean().item()
    console.print(f"test accuracy {100 * acc_before:.2f}% -> {100 * acc_after:.2f}%; "
                  f"identical predictions on {100 * same:.2f}% of {len(x)} images; "
                  f"max |logit difference| {(before - after).abs().max().item():.2e}")
    warning = check_accuracy(args, "the Winograd rewrite", acc_before, acc_after)
    if warning:
        console.print(warning, markup=False)
    return 0
