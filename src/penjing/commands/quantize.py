"""``penjing quantize``: PTQ or QAT of a model, int8 conversion, per-layer report."""

from __future__ import annotations

import argparse
import copy

from penjing.commands._common import add_model_args, load_model_and_data

EXAMPLES = """\
examples:
  penjing quantize                                       # LeNet-300-100, 8-bit PTQ (W8A8), int8 kernels
  penjing quantize --model lenet5 --bits 8 --per-channel --calib 256
  penjing quantize --bits 4 --mode qat --lsq --epochs 5  # 4-bit weights, trained
  penjing quantize --bits 8 --act-bits none              # weight-only
  penjing quantize --sensitivity                         # per-layer sensitivity + mixed precision
"""


def _act_bits(value: str) -> int | None:
    if value.lower() in ("none", "0", "off"):
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--act-bits takes an integer or 'none', got {value!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize", help="quantize a model (PTQ or QAT) and run it with int8 kernels",
        description="Quantize weights (and activations) with post-training calibration or "
        "quantization-aware training, print the per-layer report and the accuracy of the float, "
        "fake-quantized and int8-converted models.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument("--bits", type=int, default=8, help="weight bits: 2-8 or 16 (default: 8)")
    p.add_argument("--act-bits", type=_act_bits, default=8,
                   help="activation bits, or 'none' for weight-only (default: 8)")
    p.add_argument("--mode", choices=["ptq", "qat"], default="ptq", help="default: ptq")
    p.add_argument("--per-channel", dest="per_channel", action="store_true", default=True,
                   help="one scale per output channel (default)")
    p.add_argument("--per-tensor", dest="per_channel", action="store_false", help="one scale per layer")
    p.add_argument("--asymmetric", action="store_true", help="asymmetric weight grids (zero-point)")
    p.add_argument("--observer", default="minmax", help="weight observer: minmax, percentile, mse")
    p.add_argument("--act-observer", default="minmax",
                   help="activation observer: minmax, moving_average, percentile, mse")
    p.add_argument("--reduce-range", choices=["weights", "activations", "none"], default="weights",
                   help="which side of the int8 product gets a 7-bit range so AVX2 kernels cannot saturate: "
                   "weights (default: per-channel weights lose least, the int8 Linear needs no input clamp), "
                   "activations (torch.ao's x86 choice) or none (CPUs with VNNI)")
    p.add_argument("--calib", type=int, default=512, help="calibration samples (default: 512)")
    p.add_argument("--lsq", action="store_true", help="QAT: learn the step sizes (LSQ)")
    p.add_argument("--epochs", type=int, default=5, help="QAT epochs (default: 5)")
    p.add_argument("--lr", type=float, default=1e-4, help="QAT learning rate (default: 1e-4)")
    p.add_argument("--no-convert", action="store_true", help="keep fake quantization (no int8 kernels)")
    p.add_argument("--sensitivity", action="store_true",
                   help="also quantize each layer alone at 2/4/8 bits and suggest mixed precision")
    p.add_argument("--save", help="write the converted int8 state_dict here (safetensors)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from penjing.models.user import save_state_dict
    from penjing.quantization import QuantConfig, convert, qat_fit, quantize, sensitivity
    from penjing.quantization.config import reduce_range_flags
    from penjing.quantization.report import layer_report, rich_table, state_bytes
    from penjing.train import evaluate

    if args.calib < 1:
        raise ValueError(f"--calib must be >= 1, got {args.calib}")
    config = QuantConfig(bits=args.bits, act_bits=args.act_bits, mode=args.mode, per_channel=args.per_channel,
                         symmetric=not args.asymmetric, observer=args.observer, act_observer=args.act_observer,
                         lsq=args.lsq, calib_samples=args.calib, progress=not args.no_progress,
                         **reduce_range_flags(args.reduce_range))
    model, train, test = load_model_and_data(args)
    console = Console()
    float_model = copy.deepcopy(model)
    before = evaluate(model, test)
    if args.sensitivity:
        result = sensitivity(float_model, test, bits=(2, 4, 8))
        console.print("[bold]sensitivity[/bold] (weights of one layer quantized at a time)")
        console.print(result.to_markdown())
    if args.mode == "qat":
        qat_fit(model, config, train, epochs=args.epochs, lr=args.lr, progress=not args.no_progress)
    else:
        quantize(model, config, calibration=train)
    fake = evaluate(model, test)
    console.print(rich_table(layer_report(model), title=f"{args.model}: {args.mode.upper()} W{args.bits}"
                             f"{'' if args.act_bits is None else f' A{args.act_bits}'}"))
    line = f"accuracy: float {100 * before:.2f}% -> fake-quant {100 * fake:.2f}%"
    if not args.no_convert:
        convert(model)
        int8 = evaluate(model, test)
        line += (f" -> int8 kernels {100 * int8:.2f}% ({100 * (int8 - before):+.2f} points); "
                 f"state_dict {state_bytes(float_model):,} -> {state_bytes(model):,} bytes")
        if args.save:
            save_state_dict(model.state_dict(), args.save)
            line += f"; saved {args.save}"
    print(line)
    return 0
