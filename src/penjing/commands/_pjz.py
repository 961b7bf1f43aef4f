"""Reading a ``.pjz`` file for a command: a damaged or missing file is one line and exit 2."""

from __future__ import annotations

import sys
from typing import Any


class FileProblem(Exception):
    """A file the command was given cannot be used; ``str`` is the one line to print."""


def read(command: str, path: str, *, info: bool = False, with_info: bool = False) -> Any:
    """``penjing.load(path)`` (or ``inspect`` when ``info``; ``(state, FileInfo)`` when
    ``with_info``), turning every reason the file cannot be read into :class:`FileProblem`
    with a one-line message."""
    from penjing.codec import CorruptFileError, inspect, load
    from penjing.codec.file import MAX_ELEMENTS, _read

    try:
        if with_info:
            return _read(path, MAX_ELEMENTS)
        return inspect(path) if info else load(path)
    except CorruptFileError as exc:
        raise FileProblem(f"penjing {command}: error: {path} is damaged or not a .pjz file: {exc}") from None
    except (OSError, MemoryError) as exc:
        raise FileProblem(f"penjing {command}: error: cannot read {path}: {exc}") from None


def load_into(command: str, path: str, model, model_name: str, **options: Any):
    """``penjing.load(path, model, ...)``: the file's structure record replayed on the freshly
    built ``model``, then its weights loaded strictly; a damaged file, or one whose structure
    or tensors do not fit ``--model`` (naming the module), is :class:`FileProblem`."""
    from penjing.codec import CorruptFileError
    from penjing.runtime.load import load_into as runtime_load

    try:
        return runtime_load(model, path, **options)
    except FileNotFoundError as exc:
        raise FileProblem(f"penjing {command}: error: {exc}") from None
    except CorruptFileError as exc:
        raise FileProblem(f"penjing {command}: error: {path} is damaged or not a .pjz file: {exc}") from None
    except (OSError, MemoryError) as exc:
        raise FileProblem(f"penjing {command}: error: cannot read {path}: {exc}") from None
    except (ValueError, RuntimeError) as exc:
        detail = (str(exc).strip().splitlines()[0].replace(f"{path} does not fit the model: ", "")
                  .replace(f"{path}'s structure record", "its structure record"))
        raise FileProblem(f"penjing {command}: error: {path} does not fit --model {model_name}: {detail}") from None


def describe_structure(steps: list[dict] | None) -> list[str]:
    """One line per step of a structure record (for ``inspect`` and ``decompress``)."""
    lines = []
    for i, step in enumerate(steps or [], 1):
        names = [m["name"] for m in step["modules"]]
        shown = ", ".join(_module_text(step["kind"], m) for m in step["modules"][:4])
        more = f", ... ({len(names)} modules)" if len(names) > 4 else ""
        lines.append(f"{i}. {step['kind']}: {shown}{more}")
    return lines


def _module_text(kind: str, entry: dict) -> str:
    name = entry["name"] or "(root)"
    if kind == "lowrank":
        rank = entry.get("rank")
        return f"{name} ({entry.get('method')} rank {'x'.join(map(str, rank)) if isinstance(rank, list) else rank})"
    if kind == "winograd":
        return f"{name} (F({entry.get('m') or 'auto'}))"
    if kind == "prune_channels":
        now = entry.get("now", {}).get("weight")
        return f"{name} ({'x'.join(map(str, now))})" if now else name
    if kind == "int8":
        return f"{name} ({entry.get('kind')})"
    if kind == "fold_bn":
        return f"{entry.get('bn')} into {name}"
    return name


def report(problem: FileProblem) -> int:
    print(problem, file=sys.stderr)
    return 2
