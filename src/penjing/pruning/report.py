"""Round-by-round record of a pruning schedule: a Markdown table and a PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from penjing.pruning.api import RoundInfo


def rounds_markdown(rounds: Sequence[RoundInfo], dense_accuracy: float | None = None) -> str:
    """Markdown table: per round, the weights kept in the pruned layers and the accuracy."""
    lines = ["| round | weights (pruned layers) | nonzero | kept % | accuracy % |", "|---|---|---|---|---|"]
    if dense_accuracy is not None:
        lines.append(f"| dense | | | 100.0 | {100 * dense_accuracy:.2f} |")
    for r in rounds:
        acc = f"{100 * r.accuracy:.2f}" if r.accuracy is not None else ""
        lines.append(f"| {r.round}/{r.rounds} | {r.params:,} | {r.nonzeros:,} | {100 * r.kept:.2f} | {acc} |")
    return "\n".join(lines) + "\n"


def rounds_plot(rounds: Sequence[RoundInfo], path: str | Path, dense_accuracy: float | None = None) -> Path:
    """Weights kept (left axis) and accuracy (right axis) after every round, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    xs = [0, *(r.round for r in rounds)]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(xs, [100.0, *(100 * r.kept for r in rounds)], marker="o", color="#2a9d8f")
    ax.set_xlabel("pruning round (0 = dense)")
    ax.set_ylabel("weights kept, %", color="#2a9d8f")
    ax.set_ylim(0, 105)
    if all(r.accuracy is not None for r in rounds) and dense_accuracy is not None:
        acc = ax.twinx()
        acc.plot(xs, [100 * dense_accuracy, *(100 * r.accuracy for r in rounds)], marker="s",
                 color="#e76f51")
        acc.set_ylabel("test accuracy, %", color="#e76f51")
    ax.set_title("Prune + fine-tune, round by round")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
