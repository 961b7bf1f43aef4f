"""``report.json``: what a recipe run measured, kept so the HTML report can be rebuilt later.

``penjing report OUT_DIR`` reads this file (plus the PNGs named in it) and writes
``report.html`` again; nothing needs the models any more. The format is plain JSON: the
summaries (headers, rows, totals), the plots (titles and file names inside ``OUT_DIR``), the
Markdown sections steps added, and per-layer energy / simulated latency of the dense and final
models when they could be measured.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from penjing.report.summary import Summary

FORMAT = "penjing-report"
VERSION = 1


def summary_record(s: Summary) -> dict:
    return {"title": s.title, "header": s.header(), "rows": s.table_rows(), "totals": s.totals(),
            "accuracy": s.accuracy, "ratio": s.ratio if s.bytes else None, "params": s.params,
            "nonzeros": s.nonzeros, "bytes": s.bytes, "dense_bytes": s.dense_bytes,
            "file_bytes": s.file_bytes, "layer_kept": {r.name: r.kept for r in s.rows},
            "warnings": list(s.warnings)}


def costs(dense: nn.Module, model: nn.Module, example) -> dict | None:
    """Per-layer energy (45 nm table) and latency on the simulated ``tpu-v1`` systolic array,
    dense vs final, batch 1. ``None`` when the models cannot be traced (the report then
    leaves the section out rather than fail)."""
    from penjing.hw import simulate

    try:
        reports = {label: simulate(m.eval(), example, "tpu-v1") for label, m in
                   (("dense", dense), ("final", model))}
    except Exception:  # noqa: BLE001 -- a model the tracer cannot follow only drops the section
        return None
    out: dict = {"hw": "tpu-v1 (simulated systolic array, batch 1)", "layers": {}}
    for label, rep in reports.items():
        clock = rep.cycles / rep.time_s if rep.time_s else None
        out[f"{label}_total"] = {"energy_pj": rep.energy_pj, "latency_us": 1e6 * rep.time_s}
        for row in rep.rows:
            entry = out["layers"].setdefault(row.name, {})
            entry[f"{label}_energy_pj"] = row.energy_pj
            entry[f"{label}_latency_us"] = 1e6 * row.cycles / clock if clock else None
    return out


def save_run(out_dir: Path, summaries: list[Summary], plots: list[tuple[str, Path]], sections: list[str],
             cost: dict | None, speed: dict | None = None) -> Path:
    data = {"format": FORMAT, "version": VERSION, "summaries": [summary_record(s) for s in summaries],
            "plots": [{"title": t, "file": Path(p).name} for t, p in plots], "sections": list(sections),
            "costs": cost, "speed": speed}
    path = Path(out_dir) / "report.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def load_run(out_dir: str | Path) -> dict:
    """Read ``OUT_DIR/report.json``, checking it is one penjing wrote."""
    path = Path(out_dir) / "report.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: give the output folder of a `penjing compress` run")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a penjing report (no format={FORMAT!r})")
    if data.get("version") != VERSION:
        raise ValueError(f"{path} has report version {data.get('version')!r}; this penjing reads {VERSION}")
    if not isinstance(data.get("summaries"), list) or not data["summaries"]:
        raise ValueError(f"{path} holds no step summaries")
    for plot in data.get("plots", []):  # only PNGs inside the folder may be embedded
        name = plot.get("file") if isinstance(plot, dict) else None
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".png"):
            raise ValueError(f"{path} names a plot {name!r} that is not a PNG file inside {path.parent}")
    return data
