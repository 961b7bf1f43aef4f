"""Per-layer table (rank, parameters and MACs before/after, relative error) and the
singular-value spectrum plot of a :class:`~penjing.low_rank.api.LowRankResult`."""

from __future__ import annotations

import math
from pathlib import Path

HEADER = ["layer", "method", "shape", "rank", "params before", "params after", "MACs before",
          "MACs after", "rel. error", "note"]


def _num(value) -> str:
    return "?" if value is None else f"{value:,}"


def _rank(rank) -> str:
    if rank is None:
        return "dense"
    return "x".join(map(str, rank)) if isinstance(rank, tuple) else str(rank)


def rows(result) -> list[list[str]]:
    out = []
    for r in result.layers:
        out.append([r.name, r.method, "x".join(map(str, r.shape)), _rank(r.rank), _num(r.params_before),
                    _num(r.params_after), _num(r.flops_before), _num(r.flops_after),
                    f"{r.error:.4f}" if r.rank is not None else "-", r.reason])
    return out


def totals(result) -> str:
    parts = [f"params {result.params_before:,} -> {result.params_after:,} "
             f"({100 * result.param_ratio:.1f}%)"]
    if result.flop_ratio is not None:
        parts.append(f"MACs/sample {result.flops_before:,} -> {result.flops_after:,} "
                     f"({100 * result.flop_ratio:.1f}%)")
    return " | ".join(parts)


def rich_table(result):
    from rich.table import Table

    table = Table(title="low-rank factorisation", title_justify="left")
    for i, col in enumerate(HEADER):
        table.add_column(col, justify="right" if 3 <= i <= 8 else "left")
    for row in rows(result):
        table.add_row(*row)
    return table


def to_markdown(result) -> str:
    lines = ["| " + " | ".join(HEADER) + " |",
             "|" + "|".join("---:" if 3 <= i <= 8 else "---" for i in range(len(HEADER))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows(result)]
    return "\n".join([*lines, "", totals(result), ""])


def plot_spectra(result, path: str | Path) -> Path:
    """One panel per layer: normalised singular values (log scale) of the matrix the method
    truncates, with the chosen rank marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    layers = [r for r in result.layers if r.spectrum]
    if not layers:
        raise ValueError("no factorisable layer to plot")
    cols = min(3, len(layers))
    n_rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(4.2 * cols, 3.0 * n_rows), squeeze=False)
    for ax, r in zip(axes.flat, layers, strict=False):
        s = r.spectrum
        top = s[0] if s and s[0] > 0 else 1.0
        ax.semilogy(range(1, len(s) + 1), [max(v / top, 1e-12) for v in s], color="#3b7dd8")
        title = f"{r.name} ({r.method})"
        if r.break_even is not None and r.break_even < len(s):
            ax.axvline(r.break_even, color="#999999", linestyle=":", label=f"break-even {r.break_even}")
        if r.rank is not None:
            cut = r.rank[1] if isinstance(r.rank, tuple) else r.rank  # tucker: output mode shown
            ax.axvline(cut, color="#e76f51", linestyle="--", label=f"rank {_rank(r.rank)}")
        else:
            title += " dense"
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("index")
        ax.set_ylabel("sigma / sigma_1")
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
