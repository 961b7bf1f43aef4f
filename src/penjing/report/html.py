"""``report.html``: one self-contained page (tables, and every plot embedded as base64 PNG).

Built from ``report.json`` and the PNGs of a run's output folder (see
:mod:`penjing.report.run_data`), so ``penjing report OUT_DIR`` can rebuild it any time. No
script, no external file, no network: it opens from a mail attachment or a CI artifact.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from penjing.core.report import RATIO_BASIS, ms_text
from penjing.report.run_data import load_run

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
color:#1d2733;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #d8dee6;padding-bottom:.2em;margin-top:1.6em}
.headline{font-size:1.15em;background:#eef5fb;border-left:4px solid #3b7dd8;padding:.6em 1em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #d8dee6;padding:.25em .6em}th{background:#f3f6f9;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #e3e7ec;margin:.4em 0}
details>summary{cursor:pointer;font-weight:600;margin:.4em 0}
.totals{color:#44505c;font-size:.9em}
nav a{margin-right:1em}
"""

SECTIONS = [("steps", "Step by step"), ("layers", "Per-layer tables"), ("sparsity", "Sparsity per layer"),
            ("weights", "Weight histograms"), ("cost", "Energy and latency"), ("speed", "Speed on this CPU"),
            ("plots", "Step plots"),
            ("notes", "Step notes")]


def _esc(value) -> str:
    return html.escape(str(value))


def _table(header: list[str], rows: list[list], left: int = 1) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(c)}</td>" if i < left else f'<td class="num">{_esc(c)}</td>'
                         for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _png(data: bytes, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _plot_file(out_dir: Path, name: str) -> bytes:
    path = out_dir / name
    if not path.exists():
        raise FileNotFoundError(f"report.json names {name}, which is not in {out_dir}")
    return path.read_bytes()


def _steps_plot(summaries: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [s["title"].removeprefix("after step ") for s in summaries]
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(labels) + 2), 3.2))
    ratios = [s["ratio"] or 0 for s in summaries]
    ax.bar(labels, ratios, color="#3b7dd8")
    ax.set_ylabel("x smaller than dense fp32", color="#3b7dd8")
    if any(s["accuracy"] is not None for s in summaries):
        acc = ax.twinx()
        acc.plot(labels, [100 * s["accuracy"] if s["accuracy"] is not None else float("nan") for s in summaries],
                 "o-", color="#e76f51")
        acc.set_ylabel("test accuracy (%)", color="#e76f51")
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _fmt_pj(pj: float | None) -> str:
    if pj is None:
        return "-"
    from penjing.hw.energy import format_pj

    return format_pj(pj)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.1f}x" if a and b else "-"


def _cost_section(cost: dict | None) -> str:
    if not cost:
        return "<p>Not measured: the model could not be traced by penjing.hw.</p>"
    rows = []
    for name, e in cost["layers"].items():
        lat_d, lat_f = e.get("dense_latency_us"), e.get("final_latency_us")
        rows.append([name, _fmt_pj(e.get("dense_energy_pj")), _fmt_pj(e.get("final_energy_pj")),
                     _ratio(e.get("dense_energy_pj"), e.get("final_energy_pj")),
                     "-" if lat_d is None else f"{lat_d:.2f}", "-" if lat_f is None else f"{lat_f:.2f}",
                     _ratio(lat_d, lat_f)])
    d, f = cost["dense_total"], cost["final_total"]
    rows.append(["total", _fmt_pj(d["energy_pj"]), _fmt_pj(f["energy_pj"]), _ratio(d["energy_pj"], f["energy_pj"]),
                 f"{d['latency_us']:.2f}", f"{f['latency_us']:.2f}", _ratio(d["latency_us"], f["latency_us"])])
    head = ["layer", "energy dense", "energy final", "less energy", "latency dense (us)", "latency final (us)",
            "speed-up"]
    return (f"<p>Per inference on {_esc(cost['hw'])}; energy from the 45 nm table (weights and "
            "activations from DRAM/SRAM, MACs). Simulated, not measured on this CPU.</p>" + _table(head, rows))


def _speed_section(speed: dict | None) -> str:
    """The runtime's per-layer table of the written file (see penjing.runtime.report)."""
    if not speed:
        return "<p>Not measured: the run wrote no .pjz file, or ran with --no-speed-report.</p>"
    if "error" in speed:
        return f"<p>{_esc(speed['error'])}</p>"
    rows = [[r["name"], r["format"], r["kernel"], r["batch"], f"{r['weight_bytes']:,}",
             f"{r['dense_bytes'] / r['weight_bytes']:.1f}x", ms_text(r['time_s']), ms_text(r['dense_s']),
             f"{r['speedup']:.2f}x", ms_text(r['predicted_s']), f"{r['bandwidth_fraction']:.0%}"]
            for r in speed["rows"]]
    head = ["layer", "format", "kernel", "batch", "weight bytes/call", "vs dense bytes", "time (ms)", "dense (ms)",
            "speed-up", "bytes predict (ms)", "of bandwidth"]
    return (f"<p>{_esc(speed['file'])} run by the penjing runtime's CPU kernels ({_esc(speed['isa'])}, "
            f"{speed['threads']} thread(s)) vs dense F.linear / F.conv2d on the same weights, median of "
            f"{speed['rounds']} interleaved rounds; measured read bandwidth {speed['bandwidth'] / 1e9:.1f} GB/s. "
            "Measured on this CPU.</p>" + _table(head, rows, left=3))


def render_html(data: dict, out_dir: str | Path) -> str:
    """The HTML page for a run's ``report.json`` data; plots are read from ``out_dir``."""
    from markdown_it import MarkdownIt

    out_dir = Path(out_dir)
    summaries = data["summaries"]
    first, last = summaries[0], summaries[-1]
    parts = ["<!doctype html><html lang=en><head><meta charset=utf-8>",
             "<title>penjing report</title>", f"<style>{STYLE}</style></head><body>",
             "<h1>penjing report</h1>"]
    headline = []
    if first["accuracy"] is not None and last["accuracy"] is not None:
        headline.append(f"Accuracy {100 * first['accuracy']:.2f}% dense &rarr; {100 * last['accuracy']:.2f}% final "
                        f"({100 * (last['accuracy'] - first['accuracy']):+.2f} points)")
    if last["ratio"]:
        headline.append(f"size <b>{last['ratio']:.1f}x</b> smaller than dense float32 of the original model")
    if headline:
        parts.append(f'<p class="headline">{"; ".join(headline)}.</p>')
    parts.append("<nav>" + "".join(f'<a href="#{k}">{_esc(t)}</a>' for k, t in SECTIONS) + "</nav>")

    parts.append('<h2 id="steps">Step by step</h2>')
    step_rows = [[s["title"], f"{s['params']:,}", f"{100 * s['nonzeros'] / s['params']:.1f}" if s["params"] else "-",
                  f"{s['bytes']:,.0f}", "file" if s["file_bytes"] is not None else "estimate",
                  f"{s['ratio']:.1f}x" if s["ratio"] else "-",
                  f"{100 * s['accuracy']:.2f}" if s["accuracy"] is not None else "-"] for s in summaries]
    parts.append(f"<p>{_esc(RATIO_BASIS)}.</p>")
    parts += [f'<p class="headline"><b>{_esc(w)}</b></p>' for s in summaries for w in s.get("warnings", [])]
    parts.append(_table(["step", "params", "kept %", "bytes", "bytes from", "ratio", "accuracy %"], step_rows))
    parts.append(_png(_steps_plot(summaries), "size ratio and accuracy per step"))

    parts.append('<h2 id="layers">Per-layer tables</h2>')
    for i, s in enumerate(summaries):
        opened = " open" if i in (0, len(summaries) - 1) else ""
        parts.append(f"<details{opened}><summary>{_esc(s['title'])}</summary>"
                     + _table(s["header"], s["rows"], left=3) + f'<p class="totals">{_esc(s["totals"])}</p></details>')

    parts.append('<h2 id="sparsity">Sparsity per layer</h2>')
    kept_d, kept_f = first["layer_kept"], last["layer_kept"]
    parts.append(_table(["layer", "kept % dense", "kept % final"],
                        [[n, f"{100 * kept_d.get(n, 1.0):.1f}", f"{100 * k:.1f}"] for n, k in kept_f.items()]))
    plots = data["plots"]
    standard = {"weights_histogram.png": "weights", "sparsity_per_layer.png": "sparsity"}
    for p in plots:
        if standard.get(p["file"]) == "sparsity":
            parts.append(_png(_plot_file(out_dir, p["file"]), p["title"]))
    parts.append('<h2 id="weights">Weight histograms, dense vs final</h2>')
    for p in plots:
        if standard.get(p["file"]) == "weights":
            parts.append(_png(_plot_file(out_dir, p["file"]), p["title"]))

    parts.append('<h2 id="cost">Energy and latency</h2>')
    parts.append(_cost_section(data.get("costs")))

    parts.append('<h2 id="speed">Speed on this CPU</h2>')
    parts.append(_speed_section(data.get("speed")))

    parts.append('<h2 id="plots">Step plots (rounds, sensitivity curves, spectra)</h2>')
    extra = [p for p in plots if p["file"] not in standard]
    if not extra:
        parts.append("<p>No step drew a plot (sensitivity curves appear here when a step runs a sweep).</p>")
    for p in extra:
        parts.append(f"<h3>{_esc(p['title'])}</h3>" + _png(_plot_file(out_dir, p["file"]), p["title"]))

    parts.append('<h2 id="notes">Step notes</h2>')
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    parts += [md.render(section) for section in data.get("sections", [])] or ["<p>None.</p>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(out_dir: str | Path) -> Path:
    """(Re)build ``OUT_DIR/report.html`` from ``OUT_DIR/report.json`` and its PNGs."""
    out_dir = Path(out_dir)
    try:
        page = render_html(load_run(out_dir), out_dir)
    except (KeyError, TypeError, AttributeError) as exc:  # a hand-edited or truncated report.json
        raise ValueError(f"{out_dir / 'report.json'} is malformed ({type(exc).__name__}: {exc})") from None
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
