"""``penjing export``: a model (reference, your own class, or a ``.pjz``) to ONNX, checked by
ONNX Runtime."""

from __future__ import annotations

import argparse
from pathlib import Path

from penjing.commands._common import add_model_args, load_model_and_data

EXAMPLES = """\
examples:
  penjing export                                    # LeNet-300-100 (trained on digits) -> model.onnx
  penjing export --int8 -o lenet_int8.onnx          # PTQ int8, written as a QDQ graph
  penjing compress && penjing export out/model.pjz  # the compressed file's weights, as dense ONNX
  penjing export --model my.py:MyNet --weights my.safetensors --exporter torchscript
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write a model as ONNX (float, or int8 as a QDQ graph) and check it with ONNX Runtime",
        description="Export a model with torch.onnx.export (the dynamo exporter, TorchScript as a "
        "fallback; the output says which ran), run the file with ONNX Runtime on test samples and "
        "print the max relative error against PyTorch. Needs the optional extra penjing[export].",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", nargs="?", help="a .pjz file whose weights to load into --model (optional)")
    add_model_args(p)
    p.add_argument("-o", "--output", help="the .onnx file (default: FILE with .onnx, or model.onnx)")
    p.add_argument("--int8", action="store_true",
                   help="quantize (PTQ, W8A8 per-channel, calibrated on --data) and convert first")
    p.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "torchscript"],
                   help="which torch.onnx exporter (default: auto = dynamo, TorchScript if it fails)")
    p.add_argument("--batch", type=int, default=8, help="example batch traced and checked (default: 8)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import warnings

    from penjing.export import export

    if args.batch < 1:
        raise ValueError(f"--batch must be at least 1, got {args.batch}")
    if args.file and args.weights:
        raise ValueError("give either a .pjz FILE or --weights, not both")
    model, train, test = load_model_and_data(args)
    if args.file:
        from penjing.codec import load

        try:
            model.load_state_dict(load(args.file), strict=True)
        except RuntimeError as exc:
            lines = str(exc).strip().splitlines()
            raise ValueError(f"{args.file} does not fit --model {args.model}: "
                             f"{lines[1].strip() if len(lines) > 1 else lines[0]}") from None
    model.eval()
    if args.int8:
        from penjing.quantization import QuantConfig, convert, quantize

        quantize(model, QuantConfig(bits=8, per_channel=True), data=train)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "left fake-quantized" layers are reported by export
            convert(model, graph=False)  # ONNX export reads the layer-by-layer int8 modules
    out = Path(args.output) if args.output else (Path(args.file).with_suffix(".onnx") if args.file
                                                 else Path("model.onnx"))
    example = test.tensors[0][: args.batch]
    result = export(model, out, example, exporter=args.exporter)
    print(result.describe())
    return 0
