"""The layering DESIGN.md sets: a method folder never imports another method folder, and the
shared layers (core, train, codec, hw, report, data, models) import no method folder, so a
method can be added or removed without touching the others. Lazy imports inside functions count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "penjing"
METHODS = ("pruning", "sharing", "quantization", "low_rank", "lowbit", "winograd_conv")
SHARED = ("core", "train", "codec", "hw", "report", "data", "models")


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
    return out


def _violations(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((SRC / folder).rglob("*.py")):
        for line, module in _imports(path):
            parts = module.split(".")
            if len(parts) > 1 and parts[0] == "penjing" and parts[1] in forbidden and parts[1] != folder:
                found.append(f"{path.relative_to(SRC)}:{line} imports {module}")
    return found


@pytest.mark.parametrize("folder", METHODS)
def test_a_method_folder_imports_no_other_method(folder):
    assert _violations(folder, METHODS) == []


@pytest.mark.parametrize("folder", SHARED)
def test_shared_layers_import_no_method(folder):
    assert _violations(folder, METHODS) == []


def test_the_checker_sees_lazy_imports(tmp_path):
    fake = tmp_path / "m.py"
    fake.write_text("def f():\n    from penjing.sharing.kmeans import kmeans_1d\n    import penjing.lowbit\n")
    assert _imports(fake) == [(2, "penjing.sharing.kmeans"), (3, "penjing.lowbit")]
