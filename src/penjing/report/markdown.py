"""The Markdown report a recipe run leaves in its output folder."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from penjing.core.report import RATIO_BASIS
from penjing.report.plots import sparsity_per_layer, weight_histogram


def write_report(ctx, dense: nn.Module, model: nn.Module) -> Path:
    """Write ``report.md`` (every step's table) and the standard plots into ``ctx.out_dir``.

    Steps may add their own plots as ``ctx.artifacts["plots"] = [(title, path), ...]`` and
    Markdown sections as ``ctx.artifacts["sections"] = [markdown, ...]``.
    """
    out = ctx.out_dir
    own = [
        ("Weight values, dense vs final (zeros left out)",
         weight_histogram({"dense": dense, "final": model}, out / "weights_histogram.png")),
        ("Weights kept per layer", sparsity_per_layer(model, out / "sparsity_per_layer.png")),
    ]
    plots = _distinct([*own, *ctx.artifacts.get("plots", [])], len(own))
    lines = ["# penjing report", ""]
    first, last = ctx.summaries[0], ctx.summaries[-1]
    if first.accuracy is not None and last.accuracy is not None:
        lines += [f"Accuracy {100 * first.accuracy:.2f}% dense -> {100 * last.accuracy:.2f}% final; "
                  f"size {last.ratio:.1f}x smaller than dense float32 of the original model.", ""]
    lines += [f"Size ratios: {RATIO_BASIS} (the written file once a step encodes, else the "
              "estimate from each layer's nonzeros and bits).", ""]
    lines += [f"> **{w}**\n" for w in getattr(ctx, "warnings", [])]
    lines += [s.to_markdown() for s in ctx.summaries]
    lines += ctx.artifacts.get("sections", [])
    speed = _speed(ctx, dense, model)
    if speed is not None:
        lines += ["## Speed on this CPU", "", speed.get("markdown") or speed["error"], ""]
    for title, path in plots:
        lines += [f"### {title}", "", f"![{title}]({Path(path).name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    _write_html(ctx, dense, model, plots, speed)
    return path


def _distinct(plots: list[tuple[str, Path]], own: int) -> list[tuple[str, Path]]:
    """``plots`` with each picture once. The first ``own`` are the report's own files: one
    byte-identical to a step's plot (the per-layer sparsity when no step after pruning changed
    it) is deleted and the step's kept; a step plot repeating another step's is listed once."""
    import hashlib

    first: dict[str, int] = {}
    keep: list[tuple[str, Path] | None] = []
    for i, (title, path) in enumerate(plots):
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        if digest not in first:
            first[digest] = i
            keep.append((title, path))
            continue
        earlier = first[digest]
        if earlier < own and keep[earlier] is not None:
            Path(keep[earlier][1]).unlink()
            keep[earlier] = None
            first[digest] = i
            keep.append((title, path))
        else:
            keep.append(None)
    return [entry for entry in keep if entry is not None]


def _speed(ctx, dense: nn.Module, model: nn.Module) -> dict | None:
    """The runtime's per-layer speed table of the ``.pjz`` the run wrote (``None`` when it
    wrote none, or ``ctx.artifacts["speed_batches"]`` is empty: ``--no-speed-report``)."""
    info, batches = ctx.artifacts.get("file"), ctx.artifacts.get("speed_batches", (1, 32))
    if info is None or not batches:
        return None
    from penjing.runtime.report import speed_record

    tensors = getattr(ctx.test, "tensors", None)
    return speed_record(info.path, [dense, model], batches, example=tensors[0][:1].float() if tensors else None)


def _write_html(ctx, dense: nn.Module, model: nn.Module, plots: list, speed: dict | None = None) -> None:
    """``report.json`` (what ``penjing report`` rebuilds from) and ``report.html`` next to
    ``report.md``."""
    from penjing.report.html import write_html
    from penjing.report.run_data import costs, save_run

    tensors = getattr(ctx.test, "tensors", None)  # the recipe's data is a TensorDataset
    cost = costs(dense, model, tensors[0][:1]) if tensors else None
    save_run(ctx.out_dir, ctx.summaries, plots, ctx.artifacts.get("sections", []), cost, speed)
    ctx.artifacts["html"] = write_html(ctx.out_dir)
