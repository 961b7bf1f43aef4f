"""The one report every verb records: the layers it touched (before -> after) and the layers it
skipped (with the reason).

A verb never sets attributes on the user's model: its report is kept in a weak map from the
model to its last report, read with :func:`last_report`::

    pj.prune(model, pj.PruneConfig(sparsity=0.9))
    print(pj.last_report(model))        # per-layer table, fits 80 columns
"""

from __future__ import annotations

import math
import textwrap
import weakref
from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass(frozen=True)
class LayerChange:
    """One layer a verb changed: what it was and what it became."""

    name: str
    kind: str  # the layer's type name (``Linear``)
    before: str
    after: str
    detail: str = ""


@dataclass(frozen=True)
class LayerSkip:
    """One layer a verb left alone, and why."""

    name: str
    kind: str
    reason: str


@dataclass
class Report:
    """What one verb call did, layer by layer.

    ``extra`` holds the method's own result object where it has one (the low-rank plan, the
    Winograd multiplication counts...), so nothing a verb measured is lost.
    """

    verb: str
    touched: list[LayerChange] = field(default_factory=list)
    skipped: list[LayerSkip] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def touch(self, name: str, module: nn.Module | str, before: str, after: str, detail: str = "") -> None:
        self.touched.append(LayerChange(name, _kind(module), before, after, detail))

    def skip(self, name: str, module: nn.Module | str, reason: str) -> None:
        self.skipped.append(LayerSkip(name, _kind(module), reason))

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def changed(self) -> bool:
        return bool(self.touched)

    def to_markdown(self) -> str:
        lines = [f"### {self.verb}: {len(self.touched)} layer(s) changed, {len(self.skipped)} skipped", ""]
        if self.touched:
            lines += ["| layer | type | before | after | detail |", "|---|---|---|---|---|"]
            lines += [f"| {c.name} | {c.kind} | {c.before} | {c.after} | {c.detail} |" for c in self.touched]
            lines.append("")
        if self.skipped:
            lines += ["| skipped layer | type | reason |", "|---|---|---|"]
            lines += [f"| {s.name} | {s.kind} | {s.reason} |" for s in self.skipped]
            lines.append("")
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def __str__(self) -> str:
        return self.render(width=80)

    def render(self, width: int = 80) -> str:
        """Plain-text table no wider than ``width``: a layer's name on its own line when long."""
        out = [f"{self.verb}: {len(self.touched)} layer(s) changed, {len(self.skipped)} skipped"]
        for c in self.touched:
            out += _entry(f"{c.name} ({c.kind})", f"{c.before} -> {c.after}"
                          + (f"  [{c.detail}]" if c.detail else ""), width)
        for s in self.skipped:
            out += _entry(f"{s.name} ({s.kind})", f"skipped: {s.reason}", width)
        out += textwrap.wrap("; ".join(self.notes), width) if self.notes else []
        return "\n".join(out)


def _kind(module: nn.Module | str) -> str:
    if isinstance(module, str):
        return module
    from penjing.core.select import type_name

    return type_name(module)


def _entry(head: str, body: str, width: int) -> list[str]:
    line = f"  {head}: {body}"
    if len(line) <= width:
        return [line]
    return [f"  {head}"] + textwrap.wrap(body, width, initial_indent="      ", subsequent_indent="      ")


_LAST: weakref.WeakKeyDictionary[nn.Module, Report] = weakref.WeakKeyDictionary()


def record(model: nn.Module, report: Report) -> None:
    """Keep ``report`` as ``model``'s last report (weakly: it does not keep the model alive)."""
    _LAST[model] = report


def last_report(model: nn.Module) -> Report:
    """The :class:`Report` of the last verb run on ``model``."""
    try:
        return _LAST[model]
    except KeyError:
        raise LookupError("no penjing verb has run on this model yet (or it ran on a copy): "
                          "call a verb such as pj.prune(model, config) first") from None


#: How every size ratio penjing prints is computed; tables and reports quote it in their header.
RATIO_BASIS = "ratio = dense float32 bytes of the original model / stored bytes"


def dense_fp32_bytes(model: nn.Module) -> int:
    """Bytes of every parameter of ``model`` stored densely as float32 (the ratios' numerator:
    pass the *original* model, before any rewrite changed its shapes)."""
    return 4 * sum(p.numel() for p in model.parameters())


def size_ratio(original_fp32_bytes: float, stored_bytes: float) -> float:
    """The one size ratio: dense float32 bytes of the original model over the stored bytes
    (the written file's size when there is one, else the estimate); ``inf`` for 0 stored bytes."""
    if original_fp32_bytes < 0 or stored_bytes < 0:
        raise ValueError(f"size_ratio takes byte counts >= 0, got {original_fp32_bytes} and {stored_bytes}")
    return original_fp32_bytes / stored_bytes if stored_bytes else float("inf")


def ratio_text(original_fp32_bytes: float, stored_bytes: float) -> str:
    """``"8.1x"`` (``"-"`` when nothing is stored): how every table cell shows :func:`size_ratio`."""
    return f"{size_ratio(original_fp32_bytes, stored_bytes):.1f}x" if stored_bytes else "-"


def ms_text(seconds: float) -> str:
    """Milliseconds for a table cell: 3 decimals, or 2 significant digits below 0.1 ms (a layer
    that takes 4 us reads ``0.0042``, not ``0.000``)."""
    ms = seconds * 1e3
    if ms >= 0.1 or ms <= 0:
        return f"{ms:.3f}"
    return f"{ms:.{max(3, 1 - math.floor(math.log10(ms)))}f}"  # 2 significant digits, no exponent


def size_line(original_fp32_bytes: int, stored_bytes: float, source: str) -> str:
    """The closing size line every command prints: stored bytes (``source``: ``"file"`` or
    ``"estimated"``) vs the original model's dense float32, and :func:`size_ratio`."""
    return (f"{ratio_text(original_fp32_bytes, stored_bytes)} smaller than dense fp32 of the original "
            f"({original_fp32_bytes:,} B -> {int(stored_bytes):,} B {source})")


#: Accuracy points a step may lose before penjing warns (``--max-drop``, recipe ``max_drop``).
DEFAULT_MAX_DROP = 2.0


def accuracy_drop_warning(step: str, before: float | None, after: float | None,
                          max_drop: float | None = DEFAULT_MAX_DROP) -> str | None:
    """The loud line to print when ``step`` took accuracy (fractions in [0, 1]) from ``before``
    to ``after``, more than ``max_drop`` points down; ``None`` when within (or not measured,
    or ``max_drop`` is ``None``: the check is off)."""
    if before is None or after is None or max_drop is None:
        return None
    drop = 100 * (before - after)
    if drop <= max_drop:
        return None
    return (f"WARNING: {step} lost {drop:.2f} accuracy points ({100 * before:.2f}% -> "
            f"{100 * after:.2f}%), more than the tolerance of {max_drop:g} (--max-drop); "
            "fine-tune longer or compress less")
