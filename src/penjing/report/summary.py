"""``penjing.summary``: the per-layer table printed after every step."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from torch.utils.data import Dataset

from penjing.core.stats import LayerStats, layer_stats


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@dataclass
class Summary:
    """Per-layer rows and whole-model totals. ``file_bytes`` is set once a real compressed
    file exists; the ratio then uses it instead of the estimate."""

    title: str
    rows: list[LayerStats]
    accuracy: float | None = None
    file_bytes: int | None = None
    extra_columns: dict[str, list[str]] = field(default_factory=dict)

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def nonzeros(self) -> int:
        return sum(r.nonzeros for r in self.rows)

    @property
    def dense_bytes(self) -> int:
        return sum(r.dense_bytes for r in self.rows)

    @property
    def bytes(self) -> float:
        if self.file_bytes is not None:
            return float(self.file_bytes)
        return sum(r.bytes + 4 * r.bias_params for r in self.rows)

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.bytes if self.bytes else float("inf")

    def header(self) -> list[str]:
        return ["layer", "type", "shape", "params", "nonzeros", "kept %", "bits", "bytes",
                *self.extra_columns]

    def table_rows(self) -> list[list[str]]:
        out = []
        for i, r in enumerate(self.rows):
            out.append([r.name, r.type, "x".join(map(str, r.shape)), f"{r.params:,}",
                        f"{r.nonzeros:,}", f"{100 * r.kept:.1f}", f"{r.bits:g}",
                        human_bytes(r.bytes), *(col[i] for col in self.extra_columns.values())])
        return out

    def totals(self) -> str:
        kept = 100 * self.nonzeros / self.params if self.params else 0.0
        source = "file" if self.file_bytes is not None else "estimated"
        parts = [f"params {self.params:,}", f"kept {kept:.1f}%",
                 f"size {human_bytes(self.bytes)} ({source}) vs {human_bytes(self.dense_bytes)} dense fp32",
                 f"ratio {self.ratio:.1f}x"]
        if self.accuracy is not None:
            parts.append(f"accuracy {100 * self.accuracy:.2f}%")
        return " | ".join(parts)

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(width=140, record=True, file=_Null())
        console.print(self.rich_table())
        return console.export_text().rstrip() + "\n" + self.totals()

    def rich_table(self):
        from rich.table import Table

        table = Table(title=self.title, title_justify="left")
        for i, col in enumerate(self.header()):
            table.add_column(col, justify="left" if i < 3 else "right")
        for row in self.table_rows():
            table.add_row(*row)
        return table

    def to_markdown(self) -> str:
        head = self.header()
        lines = [f"### {self.title}", "", "| " + " | ".join(head) + " |",
                 "|" + "|".join("---" if i < 3 else "---:" for i in range(len(head))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.table_rows()]
        lines += ["", self.totals(), ""]
        return "\n".join(lines)


class _Null:
    def write(self, _):
        return 0

    def flush(self):
        pass


def summary(model: nn.Module, test: Dataset | None = None, *, title: str = "model",
            file_bytes: int | None = None) -> Summary:
    """Measure ``model``: per-layer params, nonzeros, kept %, bits and bytes, and the test
    accuracy when ``test`` is given."""
    from penjing.train import evaluate

    accuracy = evaluate(model, test) if test is not None else None
    return Summary(title=title, rows=layer_stats(model), accuracy=accuracy, file_bytes=file_bytes)
