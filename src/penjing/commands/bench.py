"""``penjing bench FILE``: how fast a compressed file's layers run from their stored form."""

from __future__ import annotations

import argparse

from penjing.commands import _pjz
from penjing.commands._common import FILE_MODEL_HELP

EXAMPLES = """\
examples:
  penjing compress && penjing bench out/model.pjz --batch 1,32
  penjing bench out/model.pjz --runtime kernel --threads 1
  penjing bench my.pjz --model my.py:MyNet --input-shape 3,32,32
"""


def _batches(text: str) -> list[int]:
    try:
        out = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes comma-separated positive integers, got {text!r}") from None
    if not out or any(b < 1 for b in out):
        raise argparse.ArgumentTypeError(f"takes comma-separated positive integers, got {text!r}")
    return out


def _shape(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-shape takes comma-separated sizes, got {text!r}") from None
    if any(d < 1 for d in out):
        raise argparse.ArgumentTypeError(f"--input-shape takes positive sizes, got {text!r}")
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="per-layer speed of a .pjz file's layers run by the CPU kernels vs dense",
        description="Load a .pjz file into --model with compressed layers running the penjing "
        "runtime's CPU kernels (never densified), then print per layer: format, kernel chosen, "
        "bytes of weights read per call, measured time vs dense F.linear/F.conv2d in the same "
        "run (interleaved, median), and the time those bytes predict at the machine's measured "
        "read bandwidth. Also the file size and the resident memory the load added.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", help="a .pjz file written by penjing")
    p.add_argument("--model", default="lenet300", help=FILE_MODEL_HELP + " (default: lenet300)")
    p.add_argument("--data", default="digits", help="where the input shape comes from when --input-shape "
                   "is not given: digits (bundled), mnist:PATH or cifar10:PATH (default: digits)")
    p.add_argument("--input-shape", type=_shape, help="one sample's shape, e.g. 784 or 3,32,32")
    p.add_argument("--batch", type=_batches, default=[1, 32], help="batch sizes, e.g. 1,32 (default: 1,32)")
    p.add_argument("--runtime", choices=["auto", "kernel", "dense"], default="auto",
                   help="auto: per layer the faster of kernel and dense at the first --batch (default)")
    p.add_argument("--rounds", type=int, default=15, help="timed rounds per layer and batch (default 15)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--probe-mb", type=int, default=256,
                   help="size of the bandwidth probe's array in MB (default 256: several times any L3)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from penjing.models import MODELS, get_model
    from penjing.models.user import load_user_model
    from penjing.runtime.report import bandwidth_probe, format_report, speed_report

    if args.probe_mb < 1:
        raise ValueError(f"--probe-mb must be at least 1, got {args.probe_mb}")
    if args.rounds < 1:
        raise ValueError(f"--rounds must be at least 1, got {args.rounds}")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.input_shape is not None:
        example = torch.randn(1, *args.input_shape)
    else:
        from penjing.data import get_data

        example = get_data(args.data)[0].tensors[0][:1].float()
    model = get_model(args.model, example) if args.model in MODELS else load_user_model(args.model, None)
    model.eval()
    try:  # the file's structure record is replayed on the fresh model first
        model, info = _pjz.load_into("bench", args.file, model, args.model, runtime=args.runtime,
                                     batch=args.batch[0], example=example, return_info=True)
    except _pjz.FileProblem as problem:
        return _pjz.report(problem)
    bw = bandwidth_probe(args.probe_mb)
    rows = speed_report(model, args.batch, example=example, rounds=args.rounds, bandwidth=bw)
    delta = info.rss_delta
    print(f"{args.file}: {info.file_bytes:,} bytes; runtime {args.runtime} (kernels: {info.isa}); "
          f"model holds {info.model_bytes:,} bytes of tensors"
          + (f"; resident memory +{delta / 1e6:.1f} MB over the load" if delta is not None else ""))
    if info.report is not None:  # each layer on a kernel (auto: both times), each left dense with the reason
        print(info.report)
    print(format_report(rows, bw), end="")
    return 0
