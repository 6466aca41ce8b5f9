"""Human-readable output: plain-text tables (HTML reports come later)."""

from unlearnkit.report.table import format_table

__all__ = ["format_table"]
