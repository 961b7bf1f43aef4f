"""The matrix's results as Markdown: one section per model, a row per method."""

from __future__ import annotations

import datetime
import platform
import sys
from pathlib import Path


def write_table(path: str, results: dict[tuple[str, str], str], models: list[str],
                methods: list[str]) -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        from _machine import cpu_name
        cpu = cpu_name()
    except Exception:  # the header must not fail the run
        cpu = platform.processor() or "unknown CPU"
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile") if f in flags]
    cpu = f"{cpu} (flags: {', '.join(shown) or 'none of avx2/avx512f/avx512_vnni/amx_tile'})"
    lines = [
        "# Every method on the models people bring",
        "",
        "Command: `PENJING_MATRIX_OUT=benchmarks/results/models.md python -m pytest -m models "
        "tests/realmodels` (one process: the table is written by the process that ran the cells; in a venv with torch 2.14.1, torchvision 0.29.1, timm, transformers; "
        "see `.ci/run`).",
        f"Date: {datetime.date.today()}; torch {torch.__version__}; CPU: {cpu}.",
        "Every cell asserts a property (exact zero counts, bit-identical reloads, output error "
        "bounds, MACs equal to torch's FlopCounterMode with attention decomposed, parameters "
        "dropping); the figure is what "
        "it measured, the time in brackets.",
        "",
    ]
    for model in models:
        rows = [(m, results[(model, m)]) for m in methods if (model, m) in results]
        if not rows:
            continue
        lines += [f"## {model}", "", "| method | result |", "|---|---|"]
        lines += [f"| {m} | {r} |" for m, r in rows]
        lines.append("")
    Path(path).write_text("\n".join(lines))
