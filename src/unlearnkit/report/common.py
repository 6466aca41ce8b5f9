"""Small helpers the HTML report's views share: defensive access to a results file's fields,
number formatting, escaping, notes and figure frames.

A results file may be old, partial or hand-edited: every accessor here reads a malformed field
as missing instead of failing, so that a view can say what is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

from unlearnkit.report import svg

DASH = "–"


def as_map(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else an empty one (a malformed field reads as missing)."""
    return value if isinstance(value, Mapping) else {}


def as_list(value: Any) -> list[Any]:
    """``value`` as a list if it is a list or tuple, else an empty list."""
    return list(value) if isinstance(value, (list, tuple)) else []


def number(value: Any) -> float | None:
    """A finite number as float, anything else (None, NaN, text, bool) as None."""
    return float(value) if svg.is_number(value) else None


def fmt(value: Any, kind: str = "pct") -> str:
    """A value as the report shows it; missing or non-finite values become an en dash.

    Args:
        value: The value.
        kind: ``pct`` (one decimal), ``auc``/``cka`` (three), ``score``/``margin`` (two),
            ``int``, ``sec`` (two decimals below 10 s, else one), ``loss``/``rel`` (three
            significant digits), or ``text``.

    Returns:
        The text (not yet HTML-escaped).

    Example:
        >>> fmt(97.25), fmt(0.51234, "auc"), fmt(12.0, "int"), fmt(None), fmt(float("nan"))
        ('97.2', '0.512', '12', '–', '–')
        >>> fmt(0.000123, "rel"), fmt(3.14159, "sec"), fmt(42.0, "sec")
        ('0.000123', '3.14', '42.0')
    """
    if kind == "text":
        return DASH if value is None else str(value)
    value = number(value)
    if value is None:
        return DASH
    if kind == "pct":
        return f"{value:.1f}"
    if kind in ("auc", "cka"):
        return f"{value:.3f}"
    if kind in ("score", "margin"):
        return f"{value:.2f}"
    if kind == "int":
        return f"{round(value):d}"
    if kind == "sec":
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    return f"{value:.3g}"


def attr(value: Any) -> str:
    """Text escaped for a double-quoted HTML attribute."""
    return escape(str(value), quote=True)


def evidence_of(run: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """A run's ``evidence`` mapping, or None when evidence was off or the field is malformed."""
    evidence = run.get("evidence")
    return evidence if isinstance(evidence, Mapping) else None


def note(text: str, kind: str = "info") -> str:
    """A note paragraph (``kind``: info, warn, bad or muted) with escaped text.

    Example:
        >>> note("a < b", "muted")
        '<p class="note muted">a &lt; b</p>'
    """
    return f'<p class="note {kind}">{escape(text)}</p>'


def figure(title: str, body: str, legend: str) -> str:
    """A figure: escaped title, ready HTML ``body`` and an escaped caption."""
    return f'<figure><h4>{escape(title)}</h4>{body}<figcaption class="legend">{escape(legend)}</figcaption></figure>'


def legend_keys(series: Iterable[tuple[str, str, Any]]) -> str:
    """Colour swatches with the names of ``(name, colour, ...)`` series."""
    keys = "".join(f'<span><span class="swatch" style="background:{c}"></span>{escape(n)}</span>' for n, c, _ in series)
    return f'<div class="keys">{keys}</div>'
