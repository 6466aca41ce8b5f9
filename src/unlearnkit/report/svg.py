"""Hand-written SVG charts for the HTML report.

No plotting library and no external resource: every chart is a string of inline SVG, so the report
stays one self-contained file that opens offline. The charts are deliberately plain (a scatter, a
heatmap, grouped bars, lines, and images as pixel grids); each data mark carries a ``<title>`` so
that hovering shows the exact value.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

# Tableau 10: distinguishable, and readable for the common colour-vision deficiencies.
PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
)
REFERENCE_COLOR = "#111111"
ORIGINAL_COLOR = "#777777"
FONT_PX = 11
CHAR_PX = 6.3  # average glyph width at FONT_PX in a sans-serif font, for layout estimates


def color_for(index: int) -> str:
    """The palette colour of the ``index``-th method (cycling after ten).

    Example:
        >>> color_for(0), color_for(10)
        ('#4e79a7', '#4e79a7')
    """
    return PALETTE[index % len(PALETTE)]


def is_number(value: Any) -> bool:
    """True for a finite int or float (not a bool): the only values a chart can place.

    Example:
        >>> [is_number(v) for v in (1, 2.5, float("nan"), True, None, "3")]
        [True, True, False, False, False, False]
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) covering ``[low, high]``.

    Example:
        >>> nice_ticks(0, 100)
        [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        >>> nice_ticks(0.93, 0.99, 3)
        [0.92, 0.94, 0.96, 0.98, 1.0]
    """
    if not high > low:
        low, high = low - 0.5, high + 0.5
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    start = math.floor(low / step + 1e-9) * step
    n = math.ceil((high - start) / step - 1e-9)
    return [float(round(start + i * step, 10)) for i in range(n + 1)]


def tick_label(value: float, ticks: Sequence[float]) -> str:
    """A tick value with as many decimals as the tick step needs.

    Example:
        >>> tick_label(0.25, [0.0, 0.25, 0.5]), tick_label(40.0, [0.0, 20.0, 40.0])
        ('0.25', '40')
    """
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    decimals = 0
    while decimals < 6 and abs(round(step, decimals) - step) > 1e-9 * max(1.0, step):
        decimals += 1
    return f"{value:.{decimals}f}"


def _text(x: float, y: float, text: str, *, anchor: str = "start", cls: str = "", extra: str = "") -> str:
    class_attr = f' class="{cls}"' if cls else ""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{class_attr}{extra}>{escape(text)}</text>'
    )


def _svg_open(width: float, height: float, label: str) -> str:
    # No xmlns: inline SVG in HTML does not need one, and the page then holds no URL at all.
    # The viewBox (with max-width: 100 % in the CSS) lets a chart shrink with the page.
    return (
        f'<svg class="chart" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'width="{width:.0f}" height="{height:.0f}" role="img" aria-label="{escape(label)}" '
        f'font-size="{FONT_PX}">'
    )


def truncate(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` with an ellipsis (labels must not run into the plot).

    Example:
        >>> truncate("features.0.weight", 10)
        '….0.weight'
    """
    return text if len(text) <= max_chars else "…" + text[-(max_chars - 1):]


@dataclass(frozen=True)
class Point:
    """One labelled point of a scatter plot.

    Attributes:
        label: Text next to the point.
        x: Horizontal value.
        y: Vertical value.
        color: Fill colour.
        marker: ``"circle"`` (a method), ``"star"`` (the retrained reference) or ``"square"``
            (the original model).
        tooltip: Hover text; defaults to the label and both values.
    """

    label: str
    x: float
    y: float
    color: str
    marker: str = "circle"
    tooltip: str = ""


def _marker(point: Point, px: float, py: float) -> str:
    title = f"<title>{escape(point.tooltip or f'{point.label}: ({point.x:.4g}, {point.y:.4g})')}</title>"
    if point.marker == "star":
        coords = []
        for i in range(10):
            radius = 9.0 if i % 2 == 0 else 4.0
            angle = -math.pi / 2 + i * math.pi / 5
            coords.append(f"{px + radius * math.cos(angle):.1f},{py + radius * math.sin(angle):.1f}")
        return f'<polygon points="{" ".join(coords)}" fill="{point.color}" stroke="#fff" stroke-width="1">{title}</polygon>'
    if point.marker == "square":
        return (
            f'<rect x="{px - 5:.1f}" y="{py - 5:.1f}" width="10" height="10" fill="#fff" '
            f'stroke="{point.color}" stroke-width="2">{title}</rect>'
        )
    return (
        f'<circle cx="{px:.1f}" cy="{py:.1f}" r="5.5" fill="{point.color}" stroke="#fff" '
        f'stroke-width="1">{title}</circle>'
    )


def _overlaps(box: tuple[float, float, float, float], boxes: Sequence[tuple[float, float, float, float]]) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in boxes)


def _domain(
    values: Sequence[float], bounds: tuple[float, float] | None = None, pad_fraction: float = 0.06,
    min_span: float = 2.0,
) -> tuple[float, float]:
    """The range to show for ``values``: padded, at least ``min_span`` wide, clipped to ``bounds``
    (a percentage axis should not show -20 or 120 just because a point sits at 0 or 100)."""
    low, high = min(values), max(values)
    span = max(high - low, min_span)
    middle = (low + high) / 2
    low, high = middle - span / 2 - span * pad_fraction, middle + span / 2 + span * pad_fraction
    if bounds is not None:
        low, high = max(low, min(bounds[0], min(values))), min(high, max(bounds[1], max(values)))
    return low, high


def scatter(
    points: Sequence[Point],
    *,
    x_label: str,
    y_label: str,
    width: int = 560,
    height: int = 380,
    reference: Point | None = None,
    x_bounds: tuple[float, float] | None = None,
    y_bounds: tuple[float, float] | None = None,
    label: str = "scatter plot",
) -> str:
    """A scatter plot with labelled points; dashed guide lines through ``reference`` if given.

    Labels are placed greedily beside their point, on the first side that does not overlap a
    label or marker already drawn, so that nearby methods stay readable.

    Args:
        points: The points, drawn in order (draw the reference last so it stays on top).
        x_label: Horizontal axis title.
        y_label: Vertical axis title.
        width: Width of the SVG in pixels.
        height: Height of the SVG in pixels.
        reference: A point (usually the retrained model) to mark with guide lines.
        x_bounds: Limits the x axis never extends past unless a point does (e.g. 0 and 100).
        y_bounds: The same for the y axis.
        label: Accessible name of the chart.

    Returns:
        The ``<svg>`` element as a string.

    Example:
        >>> svg = scatter([Point("a", 1, 2, "#000")], x_label="x", y_label="y")
        >>> svg.startswith("<svg") and ">a</text>" in svg
        True
    """
    left, right, top, bottom = 58, 18, 14, 46
    x_ticks = nice_ticks(*_domain([p.x for p in points], x_bounds))
    y_ticks = nice_ticks(*_domain([p.y for p in points], y_bounds))
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [_svg_open(width, height, label)]
    sx, sy = _frame(parts, (left, top, plot_w, plot_h), x_ticks, y_ticks, (x_label, y_label), height)
    if reference is not None:
        rx, ry = sx(reference.x), sy(reference.y)
        dashed = 'stroke="#111" stroke-dasharray="4 3" stroke-opacity="0.5"'
        parts.append(f'<line x1="{rx:.1f}" y1="{top}" x2="{rx:.1f}" y2="{top + plot_h}" {dashed}/>')
        parts.append(f'<line x1="{left}" y1="{ry:.1f}" x2="{left + plot_w}" y2="{ry:.1f}" {dashed}/>')
    boxes: list[tuple[float, float, float, float]] = [
        (sx(p.x) - 6, sy(p.y) - 6, sx(p.x) + 6, sy(p.y) + 6) for p in points
    ]
    labels = []
    for p in points:
        px, py = sx(p.x), sy(p.y)
        parts.append(_marker(p, px, py))
        text = truncate(p.label, 28)
        w = len(text) * CHAR_PX
        candidates = [(px + 9, py + 4), (px + 9, py - 8), (px + 9, py + 16), (px - 9 - w, py + 4),
                      (px - w / 2, py - 11), (px - w / 2, py + 19), (px - 9 - w, py - 8), (px - 9 - w, py + 16)]
        chosen = candidates[0]
        for cx, cy in candidates:
            box = (cx, cy - FONT_PX + 1, cx + w, cy + 2)
            inside = cx >= left and cx + w <= width - 2 and cy - FONT_PX >= 0 and cy <= top + plot_h
            if inside and not _overlaps(box, boxes):
                chosen = (cx, cy)
                break
        boxes.append((chosen[0], chosen[1] - FONT_PX + 1, chosen[0] + w, chosen[1] + 2))
        labels.append(_text(chosen[0], chosen[1], text, cls="point-label"))
    parts.extend(labels)  # labels after markers, so that no marker hides a label
    parts.append("</svg>")
    return "".join(parts)


def diverging_color(value: float, limit: float) -> str:
    """White at 0, red for negative values and blue for positive, saturating at ``limit``.

    Example:
        >>> diverging_color(0, 5), diverging_color(-5, 5), diverging_color(10, 5)
        ('#ffffff', '#d6604d', '#4393c3')
    """
    t = max(-1.0, min(1.0, value / limit)) if limit > 0 else 0.0
    end = (0xD6, 0x60, 0x4D) if t < 0 else (0x43, 0x93, 0xC3)
    a = abs(t)
    rgb = [round(255 + (c - 255) * a) for c in end]
    return "#" + "".join(f"{c:02x}" for c in rgb)


def heatmap(
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    values: Sequence[Sequence[float | None]],
    *,
    limit: float | None = None,
    value_format: Callable[[float], str] = lambda v: f"{v:+.1f}",
    row_colors: Sequence[str] | None = None,
    label: str = "heatmap",
    col_title: str = "class",
    sparse: bool = False,
) -> str:
    """A table of coloured cells with the value written in each (diverging colours around 0).

    Args:
        row_labels: One label per row.
        col_labels: One label per column.
        values: ``values[row][col]``; ``None`` draws a grey cell with a dash.
        limit: The absolute value at which colours saturate (default: the largest, at least 1).
        value_format: Text of a cell.
        row_colors: A swatch colour per row (the method's colour elsewhere in the report).
        label: Accessible name of the chart.
        col_title: What a column is, in the hover text (``"<row>, <col_title> <col>: value"``).
        sparse: Draw only the cells with a non-zero value, on one light background: for
            mostly empty matrices (a prediction matrix), where a dash in every empty cell would
            be noise and bloat the page.

    Returns:
        The ``<svg>`` element as a string.

    Example:
        >>> svg = heatmap(["m"], ["0", "1"], [[-2.0, None]])
        >>> "-2.0" in svg and "–" in svg
        True
    """
    finite = [abs(v) for row in values for v in row if is_number(v)]
    limit = limit if limit is not None else max([1.0, *finite])
    label_w = min(max((len(r) for r in row_labels), default=4), 24) * CHAR_PX + 22
    cell_w, cell_h, top = 44, 24, 22
    width = label_w + cell_w * len(col_labels) + 4
    height = top + cell_h * len(row_labels) + 4
    parts = [_svg_open(width, height, label)]
    if sparse:
        parts.append(f'<rect x="{label_w}" y="{top}" width="{cell_w * len(col_labels) - 2}" '
                     f'height="{cell_h * len(row_labels) - 2}" fill="#f7f7f7"/>')
    for j, col in enumerate(col_labels):
        parts.append(_text(label_w + cell_w * (j + 0.5), top - 7, truncate(col, 6), anchor="middle", cls="tick"))
    for i, row in enumerate(row_labels):
        y = top + cell_h * i
        if row_colors is not None:
            parts.append(f'<rect x="2" y="{y + 7}" width="10" height="10" fill="{row_colors[i]}"/>')
        parts.append(_text(16, y + cell_h / 2 + 4, truncate(row, 24), cls="row-label"))
        for j, col in enumerate(col_labels):
            v = values[i][j] if j < len(values[i]) else None
            x = label_w + cell_w * j
            if sparse and not (is_number(v) and v != 0):
                continue
            if is_number(v):
                fill = diverging_color(float(v), limit)
                text = value_format(float(v))
                ink = "#fff" if abs(float(v)) / limit > 0.6 else "#222"
            else:
                fill, text, ink = "#eeeeee", "–", "#888"
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell_w - 2}" height="{cell_h - 2}" fill="{fill}">'
                f'<title>{escape(f"{row}, {col_title} {col}: {text}")}</title></rect>'
            )
            parts.append(_text(x + (cell_w - 2) / 2, y + cell_h / 2 + 3, text, anchor="middle", cls="cell",
                               extra=f' fill="{ink}"'))
    parts.append("</svg>")
    return "".join(parts)


def grouped_hbars(
    categories: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[float | None]]],
    *,
    x_label: str,
    value_format: Callable[[float], str] = lambda v: f"{v:.3g}",
    log_scale: bool | None = None,
    width: int = 600,
    label: str = "bar chart",
) -> str:
    """Horizontal bars: one group per category, one bar per series (name, colour, values).

    Args:
        categories: Group labels (e.g. parameter names), top to bottom.
        series: ``(name, colour, values)`` with one value (or ``None``) per category.
        x_label: Axis title under the bars.
        value_format: Text written at the end of each bar.
        log_scale: Bar lengths on a log10 axis with decade ticks. ``None`` chooses it when the
            positive values span more than two orders of magnitude: relative weight changes do
            (a bias near zero can change by 10^4 while a weight changes by 10^-3), and on a
            linear axis every bar but one would vanish.
        width: Width of the SVG in pixels.
        label: Accessible name of the chart.

    Returns:
        The ``<svg>`` element as a string.

    Example:
        >>> svg = grouped_hbars(["w"], [("a", "#000", [0.5]), ("b", "#111", [None])], x_label="x")
        >>> "0.5" in svg and "n/a" in svg
        True
        >>> "log scale" in grouped_hbars(["w", "b"], [("a", "#000", [0.001, 20.0])], x_label="x")
        True
    """
    bar_h, gap = 9, 10
    label_w = min(max((len(c) for c in categories), default=4), 30) * CHAR_PX + 8
    value_w = 58
    positive = [float(v) for _, _, vals in series for v in vals if is_number(v) and v > 0]
    if log_scale is None:
        log_scale = bool(positive) and max(positive) / min(positive) > 100
    plot_w = width - label_w - value_w
    group_h = bar_h * len(series) + gap
    axis_y = group_h * len(categories)
    height = axis_y + (44 if log_scale else 30)
    if log_scale and positive:
        low, high = math.floor(math.log10(min(positive))), math.ceil(math.log10(max(positive)))
        high = max(high, low + 1)

        def length(v: float) -> float:
            # Values at or below the lowest decade get a sliver, not a negative length.
            return max(0.0, (math.log10(v) - low) / (high - low)) * plot_w if v > 0 else 0.0
    else:
        full = max([*positive, 0.0]) or 1.0

        def length(v: float) -> float:
            return max(0.0, v) / full * plot_w

    parts = [_svg_open(width, height, label)]
    if log_scale and positive:
        for decade in range(low, high + 1):
            x = label_w + (decade - low) / (high - low) * plot_w
            parts.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{axis_y}" stroke="#eee"/>')
            parts.append(_text(x, axis_y + 12, f"1e{decade}", anchor="middle", cls="tick"))
    for i, category in enumerate(categories):
        y = i * group_h
        parts.append(_text(label_w - 6, y + group_h / 2 + 1, truncate(category, 30), anchor="end", cls="row-label"))
        for k, (name, color, values) in enumerate(series):
            v = values[i] if i < len(values) else None
            by = y + k * bar_h
            if is_number(v):
                bw = length(float(v))
                parts.append(
                    f'<rect x="{label_w}" y="{by}" width="{max(bw, 0.8):.1f}" height="{bar_h - 1}" fill="{color}">'
                    f'<title>{escape(f"{name}, {category}: {value_format(float(v))}")}</title></rect>'
                )
                parts.append(_text(label_w + bw + 3, by + bar_h - 1.5, value_format(float(v)), cls="bar-value"))
            else:
                parts.append(_text(label_w + 3, by + bar_h - 1.5, "n/a", cls="bar-value muted"))
    parts.append(f'<line x1="{label_w}" y1="0" x2="{label_w}" y2="{axis_y}" stroke="#999"/>')
    title = x_label + (" (log scale)" if log_scale and positive else "")
    parts.append(_text(label_w + plot_w / 2, height - 10, title, anchor="middle", cls="axis-title"))
    parts.append("</svg>")
    return "".join(parts)


def line_chart(
    x_labels: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[float | None]]],
    *,
    y_label: str,
    y_domain: tuple[float, float] = (0.0, 1.0),
    width: int = 560,
    height: int = 270,
    label: str = "line chart",
    dashed: Collection[str] = (),
) -> str:
    """Lines over categorical x positions (e.g. layers); a ``None`` value breaks the line.

    Args:
        x_labels: Category labels along the x axis, left to right.
        series: ``(name, colour, values)`` with one value (or ``None``) per x label.
        y_label: Vertical axis title.
        y_domain: Range of the y axis.
        width: Width of the SVG in pixels.
        height: Height of the SVG in pixels.
        label: Accessible name of the chart.
        dashed: Names of the series drawn as dashed lines (e.g. a second data set).

    Returns:
        The ``<svg>`` element as a string.

    Example:
        >>> svg = line_chart(["conv1", "fc"], [("a", "#000", [0.9, None])], y_label="CKA")
        >>> svg.count("<circle") == 1
        True
    """
    longest = max((len(x) for x in x_labels), default=1)
    rotate = longest * CHAR_PX > (width - 80) / max(len(x_labels), 1)
    left, right, top = 50, 20, 12
    bottom = 34 + (min(longest, 22) * CHAR_PX * 0.6 if rotate else 0)
    height = int(height + (bottom - 34))
    plot_w, plot_h = width - left - right, height - top - bottom
    ticks = nice_ticks(*y_domain)
    y0, y1 = ticks[0], ticks[-1]
    n = len(x_labels)

    def sx(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n if n else 0)

    def sy(v: float) -> float:
        return top + (1 - (v - y0) / (y1 - y0)) * plot_h

    parts = [_svg_open(width, height, label)]
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fbfbfb" stroke="#ccc"/>')
    for t in ticks:
        parts.append(f'<line x1="{left}" y1="{sy(t):.1f}" x2="{left + plot_w}" y2="{sy(t):.1f}" stroke="#eee"/>')
        parts.append(_text(left - 6, sy(t) + 4, tick_label(t, ticks), anchor="end", cls="tick"))
    for i, x in enumerate(x_labels):
        text = truncate(x, 22)
        if rotate:
            parts.append(_text(sx(i), top + plot_h + 12, text, anchor="end", cls="tick",
                               extra=f' transform="rotate(-35 {sx(i):.1f} {top + plot_h + 12:.1f})"'))
        else:
            parts.append(_text(sx(i), top + plot_h + 14, text, anchor="middle", cls="tick"))
    parts.append(_text(14, top + plot_h / 2, y_label, anchor="middle", cls="axis-title",
                       extra=f' transform="rotate(-90 14 {top + plot_h / 2:.1f})"'))
    for name, color, values in series:
        segment: list[str] = []
        segments: list[list[str]] = []
        for i in range(n):
            v = values[i] if i < len(values) else None
            if is_number(v):
                segment.append(f"{sx(i):.1f},{sy(float(v)):.1f}")
            elif segment:
                segments.append(segment)
                segment = []
        if segment:
            segments.append(segment)
        dash = ' stroke-dasharray="6 4"' if name in dashed else ""
        for seg in segments:
            if len(seg) > 1:
                parts.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        for i in range(n):
            v = values[i] if i < len(values) else None
            if is_number(v):
                fill = "#fff" if name in dashed else color  # hollow points on dashed lines
                parts.append(
                    f'<circle cx="{sx(i):.1f}" cy="{sy(float(v)):.1f}" r="3.5" fill="{fill}" stroke="{color}">'
                    f'<title>{escape(f"{name}, {x_labels[i]}: {float(v):.3f}")}</title></circle>'
                )
    parts.append("</svg>")
    return "".join(parts)


def _image_shape(image: Any) -> tuple[int, int, int] | None:
    """``(channels, height, width)`` of a nested-list image ``[H][W]`` or ``[C][H][W]``, or None."""
    if not isinstance(image, list) or not image or not isinstance(image[0], list) or not image[0]:
        return None
    if isinstance(image[0][0], list):
        c, h, w = len(image), len(image[0]), len(image[0][0])
        planes = image
    else:
        c, h, w = 1, len(image), len(image[0])
        planes = [image]
    for plane in planes:
        if not isinstance(plane, list) or len(plane) != h:
            return None
        for row in plane:
            if not isinstance(row, list) or len(row) != w or not all(is_number(v) for v in row):
                return None
    return c, h, w


def image_svg(image: Any, *, size: int = 64, label: str = "image") -> str | None:
    """An image given as nested lists of floats (``[H][W]`` or ``[C][H][W]``) as an SVG pixel grid.

    One channel is drawn in grey, three as RGB, other counts as the mean over channels. Values
    are read in ``[0, 1]``; an image outside that range (normalised inputs) is min-max scaled.
    Horizontal runs of equal colour share one rect and the most common colour is the
    background, which keeps a 28x28 digit near 150 elements instead of 784.

    Args:
        image: The nested lists.
        size: Width of the drawn image in pixels (the height follows the aspect ratio).
        label: Accessible name of the image.

    Returns:
        The ``<svg>`` element as a string, or ``None`` if ``image`` is not a well-formed grid.

    Example:
        >>> svg = image_svg([[0.0, 1.0], [1.0, 1.0]])
        >>> svg.count("<rect")
        2
        >>> image_svg([[0.0, "x"]]) is None
        True
    """
    shape = _image_shape(image)
    if shape is None:
        return None
    c, h, w = shape
    planes = image if isinstance(image[0][0], list) else [image]
    values = [v for plane in planes for row in plane for v in row]
    low, high = min(values), max(values)
    if low >= 0.0 and high <= 1.0:
        low, high = 0.0, 1.0
    scale = (high - low) or 1.0

    def level(v: float) -> int:
        return max(0, min(255, round((v - low) / scale * 255)))

    colors: list[list[str]] = []
    for y in range(h):
        row = []
        for x in range(w):
            if c == 3:
                rgb = [level(planes[k][y][x]) for k in range(3)]
            else:
                g = level(sum(planes[k][y][x] for k in range(c)) / c)
                rgb = [g, g, g]
            row.append("#" + "".join(f"{v:02x}" for v in rgb))
        colors.append(row)
    background = Counter(col for row in colors for col in row).most_common(1)[0][0]
    height = size * h / w
    parts = [
        f'<svg class="pixels" viewBox="0 0 {w} {h}" width="{size}" '
        f'height="{height:.0f}" shape-rendering="crispEdges" role="img" aria-label="{escape(label)}">',
        f'<rect width="{w}" height="{h}" fill="{background}"/>',
    ]
    for y, row in enumerate(colors):
        x = 0
        while x < w:
            end = x
            while end + 1 < w and row[end + 1] == row[x]:
                end += 1
            if row[x] != background:
                parts.append(f'<rect x="{x}" y="{y}" width="{end - x + 1}" height="1" fill="{row[x]}"/>')
            x = end + 1
    parts.append("</svg>")
    return "".join(parts)


def _frame(
    parts: list[str], box: tuple[float, float, float, float], x_ticks: Sequence[float], y_ticks: Sequence[float],
    titles: tuple[str, str], height: float,
) -> tuple[Callable[[float], float], Callable[[float], float]]:
    """Draws the plot area, grid, tick labels and axis titles of a chart with numeric axes into
    ``parts``, and returns its value-to-pixel functions ``(sx, sy)``."""
    left, top, plot_w, plot_h = box
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def sx(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * plot_w

    def sy(v: float) -> float:
        return top + (1 - (v - y0) / (y1 - y0)) * plot_h

    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fbfbfb" stroke="#ccc"/>')
    for t in x_ticks:
        parts.append(f'<line x1="{sx(t):.1f}" y1="{top}" x2="{sx(t):.1f}" y2="{top + plot_h}" stroke="#eee"/>')
        parts.append(_text(sx(t), top + plot_h + 14, tick_label(t, x_ticks), anchor="middle", cls="tick"))
    for t in y_ticks:
        parts.append(f'<line x1="{left}" y1="{sy(t):.1f}" x2="{left + plot_w}" y2="{sy(t):.1f}" stroke="#eee"/>')
        parts.append(_text(left - 6, sy(t) + 4, tick_label(t, y_ticks), anchor="end", cls="tick"))
    parts.append(_text(left + plot_w / 2, height - 8, titles[0], anchor="middle", cls="axis-title"))
    parts.append(_text(14, top + plot_h / 2, titles[1], anchor="middle", cls="axis-title",
                       extra=f' transform="rotate(-90 14 {top + plot_h / 2:.1f})"'))
    return sx, sy


def xy_chart(
    series: Sequence[tuple[str, str, Sequence[float], Sequence[float]]],
    *,
    x_label: str,
    y_label: str,
    y_domain: tuple[float, float] = (0.0, 1.0),
    dashed: Collection[str] = (),
    marks: Sequence[tuple[float, str]] = (),
    width: int = 420,
    height: int = 230,
    label: str = "line chart",
) -> str:
    """Step-free lines over a numeric x axis (e.g. rates over thresholds).

    Args:
        series: ``(name, colour, xs, ys)``; non-finite pairs are skipped.
        x_label: Horizontal axis title.
        y_label: Vertical axis title.
        y_domain: Range of the y axis.
        dashed: Names of the series drawn dashed.
        marks: Vertical guide lines ``(x, hover text)`` (e.g. the best threshold).
        width: Width of the SVG in pixels.
        height: Height of the SVG in pixels.
        label: Accessible name of the chart.

    Returns:
        The ``<svg>`` element as a string.

    Example:
        >>> svg = xy_chart([("FPR", "#000", [0.0, 1.0], [1.0, 0.0])], x_label="t", y_label="rate")
        >>> svg.count("<polyline")
        1
    """
    left, right, top, bottom = 46, 12, 10, 38
    xs = [float(x) for _, _, values, _ in series for x in values if is_number(x)] or [0.0, 1.0]
    x_ticks = nice_ticks(*_domain(xs, min_span=1e-6, pad_fraction=0.02))
    y_ticks = nice_ticks(*y_domain)
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [_svg_open(width, height, label)]
    sx, sy = _frame(parts, (left, top, plot_w, plot_h), x_ticks, y_ticks, (x_label, y_label), height)
    for x, text in marks:
        if is_number(x):
            parts.append(f'<line x1="{sx(x):.1f}" y1="{top}" x2="{sx(x):.1f}" y2="{top + plot_h}" stroke="#111" '
                         f'stroke-dasharray="2 3"><title>{escape(text)}</title></line>')
    for name, color, x_values, y_values in series:
        points = [f"{sx(float(x)):.1f},{sy(float(y)):.1f}" for x, y in zip(x_values, y_values) if is_number(x) and is_number(y)]
        dash = ' stroke-dasharray="6 4"' if name in dashed else ""
        if points:
            parts.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="{color}" stroke-width="2"{dash}>'
                         f"<title>{escape(name)}</title></polyline>")
    parts.append("</svg>")
    return "".join(parts)


@dataclass(frozen=True)
class MapMark:
    """A highlighted point of :func:`map_2d`.

    Attributes:
        x: Horizontal coordinate.
        y: Vertical coordinate.
        shape: ``"cross"``, ``"triangle"`` or ``"diamond"``.
        color: Stroke colour.
        tooltip: Hover text.
    """

    x: float
    y: float
    shape: str
    color: str
    tooltip: str


def _map_marker(mark: MapMark, px: float, py: float) -> str:
    title = f"<title>{escape(mark.tooltip)}</title>"
    if mark.shape == "cross":
        d = f"M{px - 5:.1f},{py - 5:.1f}L{px + 5:.1f},{py + 5:.1f}M{px - 5:.1f},{py + 5:.1f}L{px + 5:.1f},{py - 5:.1f}"
        return (f'<path d="{d}" stroke="#fff" stroke-width="5"/>'
                f'<path d="{d}" stroke="{mark.color}" stroke-width="2.5">{title}</path>')
    if mark.shape == "triangle":
        points = f"{px:.1f},{py - 7:.1f} {px + 6.5:.1f},{py + 5:.1f} {px - 6.5:.1f},{py + 5:.1f}"
    else:
        points = f"{px:.1f},{py - 7:.1f} {px + 7:.1f},{py:.1f} {px:.1f},{py + 7:.1f} {px - 7:.1f},{py:.1f}"
    return f'<polygon points="{points}" fill="{mark.color}" stroke="#fff" stroke-width="1.5">{title}</polygon>'


def map_2d(
    background: Sequence[tuple[float, float, str]],
    marks: Sequence[MapMark],
    *,
    x_label: str = "axis 1",
    y_label: str = "axis 2",
    width: int = 420,
    height: int = 340,
    label: str = "2-D map",
) -> str:
    """A 2-D map: many small background dots (colour only, no hover text, to keep the file
    small) and a few highlighted marks with shapes and hover text, drawn on top.

    Args:
        background: ``(x, y, colour)`` per dot.
        marks: The highlighted points.
        x_label: Horizontal axis title.
        y_label: Vertical axis title.
        width: Width of the SVG in pixels.
        height: Height of the SVG in pixels.
        label: Accessible name of the chart.

    Returns:
        The ``<svg>`` element as a string.

    Example:
        >>> svg = map_2d([(0.0, 0.0, "#000"), (1.0, 1.0, "#111")], [MapMark(0.5, 0.5, "cross", "#f00", "id 3")])
        >>> svg.count("<circle"), "id 3" in svg
        (2, True)
    """
    left, right, top, bottom = 46, 12, 10, 38
    xs = [p[0] for p in background if is_number(p[0])] + [m.x for m in marks if is_number(m.x)]
    ys = [p[1] for p in background if is_number(p[1])] + [m.y for m in marks if is_number(m.y)]
    x_ticks = nice_ticks(*_domain(xs or [0.0, 1.0], min_span=1e-6))
    y_ticks = nice_ticks(*_domain(ys or [0.0, 1.0], min_span=1e-6))
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [_svg_open(width, height, label)]
    sx, sy = _frame(parts, (left, top, plot_w, plot_h), x_ticks, y_ticks, (x_label, y_label), height)
    by_color: dict[str, list[str]] = {}
    for x, y, color in background:  # one group per colour: the dots then carry only a position
        if is_number(x) and is_number(y):
            by_color.setdefault(color, []).append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.6"/>')
    for color, dots in by_color.items():
        parts.append(f'<g fill="{color}" fill-opacity="0.7">{"".join(dots)}</g>')
    for mark in marks:
        if is_number(mark.x) and is_number(mark.y):
            parts.append(_map_marker(mark, sx(mark.x), sy(mark.y)))
    parts.append("</svg>")
    return "".join(parts)


def diverging_hbars(
    labels: Sequence[str],
    values: Sequence[float | None],
    *,
    limit: float,
    value_format: Callable[[float], str] = lambda v: f"{v:+.1f}",
    width: int = 460,
    label: str = "diverging bars",
) -> str:
    """One horizontal bar per label from a centre line: red to the left for negative values,
    blue to the right for positive, on a fixed scale of ``±limit``.

    The bars and value texts carry ``data-index``, the end ticks ``data-tick`` (-1, 1) and the
    SVG ``data-zero``, ``data-half`` and ``data-limit`` (centre x, half width in pixels, the
    drawn limit), so that a script can
    redraw the bars and the scale for other values.

    Args:
        labels: Row labels, top to bottom.
        values: One value (or ``None``: "n/a") per label.
        limit: The value at full half-width (> 0); larger values are clipped to it.
        value_format: Text written beside each bar.
        width: Width of the SVG in pixels.
        label: Accessible name of the chart.

    Returns:
        The ``<svg>`` element as a string.

    Example:
        >>> svg = diverging_hbars(["a", "b"], [-2.0, None], limit=5)
        >>> 'data-limit="5"' in svg and "-2.0" in svg and "n/a" in svg
        True
    """
    if not limit > 0:
        raise ValueError(f"limit must be positive, got {limit}")
    row_h, top = 18, 6
    label_w = min(max((len(t) for t in labels), default=2), 14) * CHAR_PX + 10
    value_w = 44
    half = (width - label_w - 2 * value_w) / 2
    zero = label_w + value_w + half
    height = top + row_h * len(labels) + 28
    parts = [_svg_open(width, height, label).replace(
        "<svg ", f'<svg data-zero="{zero:.1f}" data-half="{half:.1f}" data-limit="{limit:g}" ', 1)]
    for i, text in enumerate(labels):
        y = top + i * row_h
        parts.append(_text(label_w - 4, y + row_h / 2 + 4, truncate(text, 14), anchor="end", cls="row-label"))
        v = values[i] if i < len(values) else None
        if is_number(v):
            length = min(abs(float(v)), limit) / limit * half
            x = zero - length if v < 0 else zero
            fill = diverging_color(-1.0 if v < 0 else 1.0, 1.0)
            tip, shown = f"{text}: {value_format(float(v))}", value_format(float(v))
        else:
            length, x, fill, tip, shown = 0.0, zero, "#ccc", f"{text}: n/a", "n/a"
        parts.append(f'<rect data-index="{i}" x="{x:.1f}" y="{y + 2}" width="{length:.1f}" height="{row_h - 4}" '
                     f'fill="{fill}"><title>{escape(tip)}</title></rect>')
        tx = zero + length + 4 if not is_number(v) or v >= 0 else zero - length - 4
        anchor = "start" if not is_number(v) or v >= 0 else "end"
        parts.append(_text(tx, y + row_h / 2 + 4, shown, anchor=anchor, cls="bar-value",
                           extra=f' data-index="{i}"'))
    axis_y = top + row_h * len(labels)
    parts.append(f'<line x1="{zero:.1f}" y1="{top}" x2="{zero:.1f}" y2="{axis_y}" stroke="#666"/>')
    for side in (-1, 0, 1):
        v = side * limit
        parts.append(_text(zero + side * half, axis_y + 14, value_format(v) if side else "0", anchor="middle",
                           cls="tick", extra=f' data-tick="{side}"'))
    parts.append("</svg>")
    return "".join(parts)
