"""``penjing decompress FILE -o state.safetensors``: a compressed file back to a plain state_dict."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from penjing.commands import _pjz

#: where decompress keeps a file's structure record in the safetensors metadata (JSON)
METADATA_KEY = "penjing_structure"

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
        state, info = _pjz.read("decompress", args.file, with_info=True)
    except _pjz.FileProblem as problem:
        return _pjz.report(problem)
    out = Path(args.output) if args.output else Path(args.file).with_suffix(".safetensors")
    metadata = {METADATA_KEY: json.dumps(info.structure)} if info.structure else None
    save_state_dict(state, out, metadata=metadata)
    print(f"{out}: {len(state)} tensors, {sum(t.numel() for t in state.values()):,} values")
    if info.structure:
        print(f"the file records {len(info.structure)} structural rewrite(s) (in the safetensors metadata "
              f"under {METADATA_KEY!r}): this state_dict loads into the rewritten model, not into a fresh "
              "one; pj.load(FILE.pjz, FreshModel()) replays them")
        for line in _pjz.describe_structure(info.structure):
            print(f"  {line}")
    return 0
