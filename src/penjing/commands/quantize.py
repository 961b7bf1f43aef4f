"""``penjing quantize``: PTQ or QAT of a model, int8 conversion, per-layer report.

The method flags come from :class:`~penjing.quantization.QuantConfig` (declared once); the
command adds only its own (model and data, ``--no-convert``, ``--sensitivity``, ``--save``).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from penjing.commands._common import (
    add_model_args,
    add_tolerance_args,
    check_accuracy,
    load_model_and_data,
    max_drop,
)

EXAMPLES = """\
examples:
  penjing quantize                                       # LeNet-300-100, 8-bit PTQ (W8A8), int8 kernels
  penjing quantize --model lenet5 --bits 8 --per-channel --calib-samples 256
  penjing quantize --bits 4 --mode qat --lsq --qat-epochs 5   # 4-bit weights, trained
  penjing quantize --bits 8 --activations none           # weight-only
  penjing quantize --layer-bits 'fc3=8' --bits 4          # mixed precision (first matching key wins)
  penjing quantize --sensitivity                         # per-layer sensitivity + mixed precision
"""


def register(sub: argparse._SubParsersAction) -> None:
    from penjing.core.cli_config import add_config_flags
    from penjing.quantization import QuantConfig

    p = sub.add_parser(
        "quantize", help="quantize a model (PTQ or QAT) and run it with int8 kernels",
        description="Quantize weights (and activations) with post-training calibration or "
        "quantization-aware training, print the per-layer report and the accuracy of the float, "
        "fake-quantized and int8-converted models.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    add_config_flags(p, QuantConfig, skip=("int8",))
    p.add_argument("--no-convert", action="store_true", help="keep fake quantization (no int8 kernels)")
    p.add_argument("--sensitivity", action="store_true",
                   help="also quantize each layer alone at 2/4/8 bits and suggest mixed precision")
    p.add_argument("--save", help="write the quantized model here (.pjz, penjing's format; "
                   "default: not written)")
    add_tolerance_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from penjing.core.cli_config import config_from_args
    from penjing.core.report import dense_fp32_bytes, last_report, size_line
    from penjing.quantization import QuantConfig, convert, qat_fit, quantize, sensitivity
    from penjing.quantization.report import layer_report, rich_table, state_bytes
    from penjing.train import evaluate

    config = config_from_args(QuantConfig, args)
    max_drop(args)
    model, train, test = load_model_and_data(args)
    console = Console()
    float_model = copy.deepcopy(model)
    before = evaluate(model, test)
    if args.sensitivity:
        result = sensitivity(float_model, test, bits=(2, 4, 8))
        console.print("[bold]sensitivity[/bold] (weights of one layer quantized at a time)")
        console.print(result.to_markdown())
    if config.mode == "qat":
        qat_fit(model, config, train, progress=not args.no_progress)
    else:
        quantize(model, config, data=train, progress=not args.no_progress)
    fake = evaluate(model, test)
    acts = "" if config.weight_only else f" A{config.act_bits}"
    console.print(rich_table(layer_report(model), title=f"{args.model}: {config.mode.upper()} W{config.bits}{acts}"))
    line = f"accuracy: float {100 * before:.2f}% -> fake-quant {100 * fake:.2f}%"
    final = fake
    if not args.no_convert:
        convert(model)
        for skip in last_report(model).skipped:
            console.print(f"stays float: {skip.name}: {skip.reason}")
        int8 = final = evaluate(model, test)
        line += (f" -> int8 kernels {100 * int8:.2f}% ({100 * (int8 - before):+.2f} points); "
                 f"state_dict {state_bytes(float_model):,} -> {state_bytes(model):,} bytes")
    if args.save:
        from penjing.quantization.saving import save_quantized

        save_quantized(model, args.save)
        line += f"; saved {args.save}"
    warning = check_accuracy(args, f"quantization ({config.mode}, W{config.bits}{acts})", before, final)
    print(line)
    original = dense_fp32_bytes(float_model)
    if args.save:
        print(size_line(original, Path(args.save).stat().st_size, "file"))
    elif not args.no_convert:
        print(size_line(original, state_bytes(model), "state_dict"))
    if warning:
        print(warning)
    return 0
