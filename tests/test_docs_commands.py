"""The shell blocks of README.md and docs/*.md marked runnable are run, as written, with every
training run capped at one epoch (``PENJING_MAX_EPOCHS=1``).

A block is marked by an HTML comment on the line before its opening fence (invisible on
GitHub; see docs/api.md, "Runnable examples"):

    <!-- runnable -->          the default test run
    <!-- runnable: slow -->    only with ``pytest -m slow``

Every command of a marked block must be a ``penjing`` command; they run in order, in-process
(``penjing.cli.main``), in one fresh folder per block, and each must exit 0.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from penjing.cli import main

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!--\s*runnable(?::\s*(?P<kind>\w+))?\s*-->\s*$")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")
SHELL = {"", "bash", "sh", "shell", "console"}


@dataclass(frozen=True)
class Block:
    where: str  # "docs/training.md:38"
    slow: bool
    commands: tuple[tuple[str, ...], ...]


def commands_of(lines: list[str]) -> tuple[tuple[str, ...], ...]:
    """The argv of every command in a shell block: backslash continuations joined, ``#``
    comments dropped, ``a && b`` split in two."""
    joined, current = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    out = []
    for line in joined:
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            out.append(tuple(words[:cut]))
            words = words[cut + 1:]
    return tuple(c for c in out if c)


def marked_blocks(path: Path, root: Path = ROOT) -> list[Block]:
    """Every block of ``path`` marked runnable. A marker not followed by a shell fence, or an
    unclosed block, is an error (a typo must not silently drop a block from the test)."""
    lines = path.read_text().splitlines()
    rel = path.relative_to(root)
    blocks = []
    for i, line in enumerate(lines):
        marker = MARKER.match(line.strip())
        if not marker:
            continue
        fence = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        if not fence or fence.group("lang") not in SHELL:
            raise ValueError(f"{rel}:{i + 1}: a runnable marker must be followed by a shell fence (```bash)")
        end = next((j for j in range(i + 2, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise ValueError(f"{rel}:{i + 2}: the runnable block is never closed")
        blocks.append(Block(f"{rel}:{i + 2}", marker.group("kind") == "slow", commands_of(lines[i + 2:end])))
    return blocks


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [b for path in DOCS for b in marked_blocks(path)]


def test_the_marker_finds_blocks_and_parses_them(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("text\n<!-- runnable -->\n```bash\npenjing prune \\\n  --sparsity 0.5  # comment\n"
                   "penjing compress && penjing eval out/model.pjz\n```\n```bash\npenjing nope\n```\n"
                   "<!-- runnable: slow -->\n```\npenjing train\n```\n")
    fast, slow = marked_blocks(doc, tmp_path)
    assert fast == Block("x.md:3", False, (("penjing", "prune", "--sparsity", "0.5"),
                                            ("penjing", "compress"), ("penjing", "eval", "out/model.pjz")))
    assert slow == Block("x.md:12", True, (("penjing", "train"),))
    doc.write_text("<!-- runnable -->\n```python\nprint(1)\n```\n")
    with pytest.raises(ValueError, match="must be followed by a shell fence"):
        marked_blocks(doc, tmp_path)


def test_the_docs_mark_blocks_of_both_kinds():
    assert any(not b.slow for b in BLOCKS) and any(b.slow for b in BLOCKS)
    assert any(b.where.startswith("README.md") for b in BLOCKS)
    for block in BLOCKS:
        for argv in block.commands:
            assert argv[0] == "penjing", f"{block.where}: only penjing commands can be marked runnable: {argv}"


def _run(block: Block, folder: Path, monkeypatch) -> None:
    monkeypatch.chdir(folder)
    monkeypatch.setenv("PENJING_MAX_EPOCHS", "1")
    for argv in block.commands:
        rc = main(list(argv[1:]))
        assert rc == 0, f"{block.where}: `{shlex.join(argv)}` exited {rc}"


@pytest.mark.parametrize("block", [b for b in BLOCKS if not b.slow], ids=lambda b: b.where)
def test_docs_block_runs(block, tmp_path, monkeypatch):
    _run(block, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.slow], ids=lambda b: b.where)
def test_docs_block_runs_slow(block, tmp_path, monkeypatch):
    _run(block, tmp_path, monkeypatch)
