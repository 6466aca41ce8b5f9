"""Human-readable output: plain-text tables for the terminal and a self-contained HTML report."""

from unlearnkit.report.html import ResultsFormatError, load_results, render_report, write_report
from unlearnkit.report.table import format_table

__all__ = ["ResultsFormatError", "format_table", "load_results", "render_report", "write_report"]
