"""``penjing decompress FILE -o state.safetensors``: a compressed file back to a plain state_dict."""

from __future__ import annotations

import argparse
from pathlib import Path

from penjing.commands import _pjz

EXAMPLES = """\
examples:
  penjing decompress out/model.pjz -o state.safetensors
  python -c "from safetensors.torch import load_file; print(list(load_file('state.safetensors')))"
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "decompress", help="decode a .pjz file into a plain state_dict (.safetensors)",
        description="Decode a .pjz file and write its tensors as a plain safetensors "
        "state_dict (load it with safetensors.torch.load_file(path) and "
        "model.load_state_dict, or give it to another command: penjing prune --weights FILE).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", help="a .pjz file written by penjing")
    p.add_argument("-o", "--output", help="where to write the state_dict (default: FILE with .safetensors)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from penjing.models.user import save_state_dict

    try:
        state = _pjz.read("decompress", args.file)
    except _pjz.FileProblem as problem:
        return _pjz.report(problem)
    out = Path(args.output) if args.output else Path(args.file).with_suffix(".safetensors")
    save_state_dict(state, out)
    print(f"{out}: {len(state)} tensors, {sum(t.numel() for t in state.values()):,} values")
    return 0
