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
    file exists; the ratio then uses it instead of the estimate. The ratio's numerator is
    ``original_bytes``, the dense float32 bytes of the model before any step changed it
    (:data:`~penjing.core.report.RATIO_BASIS`); ``other_bytes`` are the parameters outside the
    rows (BatchNorm, LayerNorm...), counted as float32 in the estimate. ``warnings`` (a step
    that lost more accuracy than its tolerance) print under the totals."""

    title: str
    rows: list[LayerStats]
    accuracy: float | None = None
    file_bytes: int | None = None
    extra_columns: dict[str, list[str]] = field(default_factory=dict)
    original_bytes: int | None = None
    other_bytes: int = 0
    warnings: list[str] = field(default_factory=list)

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
        return sum(r.bytes + 4 * r.bias_params for r in self.rows) + self.other_bytes

    @property
    def reference_bytes(self) -> int:
        """The ratio's numerator: dense float32 of the original model (this model's own when
        no original was given)."""
        return self.original_bytes if self.original_bytes is not None else self.dense_bytes + self.other_bytes

    @property
    def ratio(self) -> float:
        from penjing.core.report import size_ratio

        return size_ratio(self.reference_bytes, self.bytes)

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
                 f"size {human_bytes(self.bytes)} ({source}) vs {human_bytes(self.reference_bytes)} "
                 "original fp32", f"ratio {self.ratio:.1f}x (original fp32 / stored)"]
        if self.accuracy is not None:
            parts.append(f"accuracy {100 * self.accuracy:.2f}%")
        return " | ".join(parts)

    def to_text(self, width: int = 80) -> str:
        """The table and totals as plain text no wider than ``width`` (see
        :mod:`penjing.report.text_table`); the totals wrap between fields, never inside one."""
        from penjing.report.text_table import pack, render

        table = render(self.header(), self.table_rows(), width, left=3, short_header=SHORT_HEADERS,
                       short_cell=_short_cell, title=self.title)
        text = table + "\n" + "\n".join(pack(self.totals().split(" | "), width))
        import textwrap

        loud = [line for w in self.warnings
                for line in textwrap.wrap(f"!! {w}", width, subsequent_indent="!! ")]
        return "\n".join([text, *loud])

    def __str__(self) -> str:
        return self.to_text(80)

    def rich_table(self):
        """A rich renderable of :meth:`to_text` at the console's width (a narrow terminal gets
        the abbreviated or vertical layout instead of wrapped cells)."""
        return _FitText(self)

    def to_markdown(self) -> str:
        head = self.header()
        lines = [f"### {self.title}", "", "| " + " | ".join(head) + " |",
                 "|" + "|".join("---" if i < 3 else "---:" for i in range(len(head))) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.table_rows()]
        lines += ["", self.totals(), ""]
        lines += [f"> **{w}**\n" for w in self.warnings]
        return "\n".join(lines)


SHORT_HEADERS = {"nonzeros": "nnz", "kept %": "kept%", "params": "params", "energy": "energy"}
SHORT_TYPES = {"Conv2d": "Conv", "Linear": "Lin", "WinogradConv2d": "WinoConv", "Int8Linear": "i8Lin",
               "Int8Conv2d": "i8Conv", "TernaryLinear": "TerLin", "ConvTranspose2d": "ConvT",
               # the int8 graph's layers (pj.convert on a CNN): oneDNN and torch.ao quantized modules
               "OnednnConv2d": "i8Conv", "QuantizedConv2d": "qConv", "QuantizedConvReLU2d": "qConvR",
               "PerShapeConv2d": "qConv", "PerShapeConvReLU2d": "qConvR", "QuantizedLinear": "qLin",
               "QuantizedLinearReLU": "qLinR"}


def _short_cell(column: str, text: str) -> str:
    if column == "type":
        return SHORT_TYPES.get(text, text)
    if column == "bytes":  # "5.6 KiB" -> "5.6K"
        return text.replace(" KiB", "K").replace(" MiB", "M").replace(" GiB", "G").replace(" B", "")
    return text


class _FitText:
    """Rich renderable: the summary as text at whatever width the console offers."""

    def __init__(self, summary: Summary):
        self.summary = summary

    def __rich_console__(self, console, options):
        from rich.text import Text

        yield Text(self.summary.to_text(options.max_width), no_wrap=True, overflow="ignore")


def summary(model: nn.Module, test: Dataset | None = None, *, title: str = "model",
            file_bytes: int | None = None, original: nn.Module | int | None = None) -> Summary:
    """Measure ``model``: per-layer params, nonzeros, kept %, bits and bytes, and the test
    accuracy when ``test`` is given. ``original`` (the model before compression, or its dense
    float32 bytes) is the ratio's reference; default ``model`` itself as dense float32."""
    from penjing.core.report import dense_fp32_bytes
    from penjing.train import evaluate

    accuracy = evaluate(model, test) if test is not None else None
    rows = layer_stats(model)
    other = _other_bytes(model, {r.name for r in rows})
    reference = dense_fp32_bytes(original) if isinstance(original, nn.Module) else original
    if reference is None:
        reference = sum(r.dense_bytes for r in rows) + other
    return Summary(title=title, rows=rows, accuracy=accuracy, file_bytes=file_bytes,
                   original_bytes=reference, other_bytes=other)


def _other_bytes(model: nn.Module, row_names: set[str]) -> int:
    """float32 bytes of the parameters no row covers (norms, embeddings' scales...): a row's
    own weight and bias, and its parametrization's tensors, are in the row already."""
    total = 0
    for name, module in model.named_modules():
        owner = name.split(".parametrizations")[0] if "parametrizations" in name.split(".") or \
            name.startswith("parametrizations") else None
        if owner is not None and (owner or "(root)") in row_names:
            continue
        for pname, p in module.named_parameters(recurse=False):
            if (name or "(root)") in row_names and pname in ("weight", "bias"):
                continue
            total += p.numel()
    return 4 * total
