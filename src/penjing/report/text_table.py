"""Plain-text tables that fit a terminal (80 columns by default) without wrapping a number.

Four layouts, the first that fits wins:

1. the full table (all headers spelled out);
2. abbreviated headers (``nonzeros`` -> ``nnz``...) and abbreviated cells (``Conv2d`` -> ``Conv``);
3. long first-column names (layer paths) on their own line, the numbers on the next;
4. vertical: one block per row, ``header value`` pairs packed into lines of ``width``.

Cells are never cut: a table that cannot fit in any layout is printed vertically, and a
value wider than the terminal stays whole on its own line.
"""

from __future__ import annotations

from collections.abc import Sequence

GAP = "  "


def _grid(header: Sequence[str], rows: Sequence[Sequence[str]], left: int) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return GAP.join(parts).rstrip()

    return [line(header), GAP.join("-" * w for w in widths), *(line(r) for r in rows)]


def _fits(lines: list[str], width: int) -> bool:
    return all(len(s) <= width for s in lines)


def pack(parts: Sequence[str], width: int, sep: str = " | ", indent: str = "") -> list[str]:
    """Join ``parts`` with ``sep`` into lines of at most ``width`` (a part is never split)."""
    lines: list[str] = []
    current = ""
    for part in parts:
        candidate = part if not current else current + sep + part
        if current and len(candidate) > width:
            lines.append(current)
            current = indent + part
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


def render(header: Sequence[str], rows: Sequence[Sequence[str]], width: int = 80, *, left: int = 1,
           short_header: dict[str, str] | None = None, short_cell=None, title: str | None = None) -> str:
    """The table as text no wider than ``width`` (see the module doc for the layouts).

    ``left``: how many leading columns are left-aligned (text); the rest are numbers.
    ``short_header`` maps headers to abbreviations; ``short_cell(column, text)`` abbreviates a
    cell (used from layout 2 on).
    """
    rows = [list(map(str, r)) for r in rows]
    head = [title] if title else []
    full = _grid(header, rows, left)
    if _fits(full, width):
        return "\n".join(head + full)
    short_header = short_header or {}
    h2 = [short_header.get(h, h) for h in header]
    r2 = [[short_cell(header[i], c) if short_cell else c for i, c in enumerate(r)] for r in rows]
    abbreviated = _grid(h2, r2, left)
    if _fits(abbreviated, width):
        return "\n".join(head + abbreviated + _legend(header, h2, width))
    if len(header) > 1:  # names on their own line, numbers below (indented by two)
        body = _grid(h2[1:], [r[1:] for r in r2], max(left - 1, 0))
        lines = [h2[0], "  " + body[0], "  " + body[1]]
        for r, values in zip(r2, body[2:], strict=True):
            lines += [r[0], "  " + values]
        if _fits(lines, width):
            return "\n".join(head + lines + _legend(header, h2, width))
    lines = []
    for r in r2:
        lines.append(r[0])
        lines += ["  " + s for s in pack([f"{h} {c}" for h, c in zip(h2[1:], r[1:], strict=True)],
                                          width - 2, sep="  ")]
    return "\n".join(head + lines + _legend(header, h2, width))


def _legend(header: Sequence[str], short: Sequence[str], width: int) -> list[str]:
    pairs = [f"{s} = {h}" for h, s in zip(header, short, strict=True) if s != h]
    return pack(pairs, width, sep="; ") if pairs else []


class FitText:
    """A rich renderable for text laid out per width: ``make(width) -> str`` is called with
    the console's width, so a narrow terminal gets a narrower layout instead of wrapped cells."""

    def __init__(self, make):
        self.make = make

    def __rich_console__(self, console, options):
        from rich.text import Text

        yield Text(self.make(options.max_width), no_wrap=True, overflow="ignore")
