"""``penjing decompress FILE -o state.pt``: a compressed file back to a plain state_dict."""

from __future__ import annotations

import argparse
from pathlib import Path

from penjing.commands import _pjz

EXAMPLES = """\
examples:
  penjing decompress out/model.pjz -o state.pt
  python -c "import torch; print(list(torch.load('state.pt', weights_only=True)))"
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "decompress", help="decode a .pjz file into a plain state_dict (.pt)",
        description="Decode a .pjz file and write its tensors with torch.save as a plain "
        "state_dict (load it with torch.load(path, weights_only=True) and "
        "model.load_state_dict).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", help="a .pjz file written by penjing")
    p.add_argument("-o", "--output", help="where to write the state_dict (default: FILE with .pt)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    try:
        state = _pjz.read("decompress", args.file)
    except _pjz.FileProblem as problem:
        return _pjz.report(problem)
    out = Path(args.output) if args.output else Path(args.file).with_suffix(".pt")
    torch.save(state, out)
    print(f"{out}: {len(state)} tensors, {sum(t.numel() for t in state.values()):,} values")
    return 0
