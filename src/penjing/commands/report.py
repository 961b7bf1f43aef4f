"""``penjing report``: rebuild a run's HTML report, or describe a compressed ``.pjz`` file."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

EXAMPLES = """\
examples:
  penjing compress --out out && penjing report out   # (re)writes out/report.html
  penjing report out/model.pjz                       # what is in the file, per tensor, in 80 columns
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="rebuild OUT_DIR/report.html from a run's outputs, or describe a .pjz file",
        description="With a folder written by `penjing compress`: rebuild its self-contained "
        "report.html (tables, plots embedded) from report.json and the PNGs. With a .pjz file: "
        "a per-tensor description (shape, codec, nonzeros, bytes, ratio vs float32) that fits "
        "the terminal.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", help="an output folder of `penjing compress`, or a .pjz file")
    p.add_argument("--width", type=int, help="table width for a .pjz description (default: the terminal's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    target = Path(args.target)
    if target.is_dir():
        from penjing.report.html import write_html

        path = write_html(target)
        print(f"wrote {path} ({path.stat().st_size:,} bytes, self-contained)")
        return 0
    if not target.exists():
        raise FileNotFoundError(f"{target} not found: give an output folder or a .pjz file")
    print(describe_pjz(target, args.width or shutil.get_terminal_size((80, 24)).columns))
    return 0


def describe_pjz(path: Path, width: int = 80) -> str:
    """Per-tensor description of a ``.pjz`` file as text no wider than ``width``."""
    from penjing.codec import inspect
    from penjing.core.report import ratio_text
    from penjing.report.text_table import pack, render

    info = inspect(path)
    rows, dense = [], 0
    for t in info.tensors:
        fp32 = 4 * t.numel
        dense += fp32
        rows.append([t.name, "x".join(map(str, t.shape)) or "scalar", t.codec, f"{t.nonzeros:,}",
                     f"{t.total:,}", ratio_text(fp32, t.total)])
    table = render(["tensor", "shape", "codec", "nonzeros", "bytes", "vs fp32"], rows, width, left=3,
                   short_header={"nonzeros": "nnz", "vs fp32": "ratio"},
                   short_cell=lambda col, text: text.replace("sparse-", "sp-") if col == "codec" else text)
    totals = [f"{path}", f"{len(info.tensors)} tensors", f"{info.bytes:,} bytes ({info.overhead} framing)",
              f"{dense:,} bytes as float32", f"ratio {ratio_text(dense, info.bytes)}"]
    return table + "\n" + "\n".join(pack(totals, width))
