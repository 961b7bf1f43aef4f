"""``penjing inspect FILE``: what is inside a compressed ``.pjz`` file, tensor by tensor."""

from __future__ import annotations

import argparse

from penjing.commands import _pjz

EXAMPLES = """\
examples:
  penjing compress && penjing inspect out/model.pjz
"""

PARTS = ["codebook", "indices", "sparse index", "values", "params", "tables"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect", help="per-tensor table of a compressed .pjz file (codec, bytes per part)",
        description="Decode a .pjz file (checking every length and checksum) and print, per "
        "tensor: shape, dtype, codec, nonzeros and the bytes of each part (codebook, codebook "
        "indices, relative sparse index, raw values, affine parameters, stream tables and "
        "Huffman code tables, header entry).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", help="a .pjz file written by penjing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import shutil
    import textwrap

    from penjing.core.report import ratio_text
    from penjing.report.text_table import render

    try:
        info = _pjz.read("inspect", args.file, info=True)
    except _pjz.FileProblem as problem:
        return _pjz.report(problem)
    head = ["tensor", "shape", "dtype", "codec", "nonzeros", *PARTS, "header", "total", "vs fp32"]
    rows = []
    dense = 0
    for t in info.tensors:
        fp32 = 4 * t.numel
        dense += fp32
        rows.append([t.name, "x".join(map(str, t.shape)) or "scalar", str(t.dtype).removeprefix("torch."),
                     t.codec, f"{t.nonzeros:,}", *(f"{t.parts.get(k, 0):,}" for k in PARTS),
                     f"{t.header:,}", f"{t.total:,}", ratio_text(fp32, t.total)])
    totals = {k: sum(t.parts.get(k, 0) for t in info.tensors) for k in PARTS}
    rows.append(["total", "", "", f"+{info.overhead} framing", f"{sum(t.nonzeros for t in info.tensors):,}",
                 *(f"{totals[k]:,}" for k in PARTS), f"{sum(t.header for t in info.tensors):,}",
                 f"{info.bytes:,}", ratio_text(dense, info.bytes)])
    # fits the terminal (80 columns when it cannot be asked): abbreviated, names on their own
    # line, or one block per tensor, never cut (penjing.report.text_table)
    width = shutil.get_terminal_size((80, 24)).columns
    title = f"{info.path}: {info.bytes:,} bytes"
    if len(title) > width:  # a long path on its own line (never cut), the size below it
        title = f"{info.path}\n{info.bytes:,} bytes"
    print(render(head, rows, width, left=4, title=title))
    if info.structure:
        print(f"structure record: {len(info.structure)} rewrite(s), replayed in this order on a fresh "
              "model by pj.load(path, model) and penjing eval/bench:")
        for line in _pjz.describe_structure(info.structure):
            print(textwrap.fill(line, width, initial_indent="  ", subsequent_indent="     "))
    print(textwrap.fill("bytes per part; 'tables' = stream counts, widths, Huffman code-length "
                        "tables and block offsets; 'framing' = magic, version, lengths and checksums; "
                        "'vs fp32' = the stored tensors as dense float32 / their bytes (a file holds "
                        "no copy of the original model: a rewrite that shrank shapes shows here "
                        "against the new shapes)",
                        width))
    return 0
