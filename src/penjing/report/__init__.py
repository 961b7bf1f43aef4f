"""Per-layer tables, Markdown reports and plots."""

from penjing.report.summary import Summary, summary

__all__ = ["Summary", "summary"]
