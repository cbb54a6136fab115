"""Chart geometry for the dashboard's inline SVG: numbers in, coordinates out (pure). The
templates draw the shapes; keeping the arithmetic here lets it be tested without a browser and
keeps the pages free of scripts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Bar:
    label: str
    value: int
    y: float
    width: float


@dataclass(frozen=True)
class BarChart:
    width: int
    height: int
    label_width: int  # room left of the bars for their labels
    plot: int  # the longest bar's length
    row: int
    bars: tuple[Bar, ...]


def bar_chart(
    rows: Sequence[tuple[str, int]],
    width: int = 760,
    label_width: int = 120,
    reserve: int = 220,
    row: int = 34,
) -> BarChart:
    """Horizontal bars scaled to the largest value; a non-zero value stays visible. ``reserve``
    is the room right of the longest bar for what is written after it."""
    plot = width - label_width - reserve
    top = max((value for _, value in rows), default=0)
    bars = tuple(
        Bar(label, value, i * row, max(2.0, plot * value / top) if value and top else 0.0)
        for i, (label, value) in enumerate(rows)
    )
    return BarChart(width, max(row, row * len(rows)), label_width, plot, row, bars)


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    value: int
    at: datetime


@dataclass(frozen=True)
class Tick:
    at: float  # the coordinate along the tick's axis
    label: str


@dataclass(frozen=True)
class LineChart:
    width: int
    height: int
    left: int
    top: int
    right: int  # x of the plot's right edge
    bottom: int  # y of the plot's bottom edge
    path: str  # an SVG path: the score holds its value until the next change
    points: tuple[Point, ...]
    y_ticks: tuple[Tick, ...]
    x_ticks: tuple[Tick, ...]
    bands: tuple[Tick, ...]  # lower bounds of the temperature bands above the lowest


def _nice_step(span: float, ticks: int = 5) -> int:
    raw = max(span / ticks, 1.0)
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000):
        if step >= raw:
            return step
    return int(raw)


def score_chart(
    series: Sequence[tuple[datetime, int]],
    end: datetime,
    bands: Sequence[tuple[str, int]] = (),
    width: int = 720,
    height: int = 240,
) -> LineChart:
    """A step line of the total score over time: from 0 before the first change, through each
    change (``series`` is (time, score after) in time order), level until ``end``."""
    left, top, right, bottom = 44, 12, width - 16, height - 28
    start = series[0][0] if series else end
    end = max(end, series[-1][0] if series else end)
    span = (end - start).total_seconds() or 1.0
    values = [value for _, value in series]
    thresholds = [lower for _, lower in bands[1:]]
    low = min([0, *values])
    step = _nice_step(max([*values, *thresholds, 10]) - low)
    floor = (low // step) * step
    ceiling = -(-max([*values, *thresholds, 10]) // step) * step

    def x(moment: datetime) -> float:
        return round(left + (right - left) * (moment - start).total_seconds() / span, 1)

    def y(value: float) -> float:
        return round(bottom - (bottom - top) * (value - floor) / (ceiling - floor), 1)

    points = tuple(Point(x(at), y(value), value, at) for at, value in series)
    path = f"M{left},{y(0)}"
    for point in points:
        path += f" H{point.x} V{point.y}"
    path += f" H{right}"
    y_ticks = tuple(Tick(y(v), str(v)) for v in range(int(floor), int(ceiling) + 1, step))
    x_ticks = (Tick(left, f"{start:%Y-%m-%d}"), Tick(right, f"{end:%Y-%m-%d}"))
    marks = tuple(Tick(y(lower), f"{band} ≥ {lower}") for band, lower in bands[1:])
    return LineChart(width, height, left, top, right, bottom, path, points, y_ticks, x_ticks, marks)
