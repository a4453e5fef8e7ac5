"""Small server-rendered SVG charts: no chart library, no CDN, nothing for the browser to download.

Shapes use presentation attributes (fill=, stroke=) rather than style=, so the pages keep a strict
Content-Security-Policy. Every chart scales with its container (viewBox) and carries a text title.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, tzinfo

from markupsafe import Markup, escape

from inspector.io.stats import DayStats, Histogram

PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#8C6D31", "#444444"]
THRESHOLD = "#C62828"
W, H, L, R, T, B = 760, 250, 52, 28, 30, 34


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k steps) covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


class _Plot:
    """Linear x/y scales onto the plot area plus the SVG elements drawn so far."""

    def __init__(self, x0: float, x1: float, y0: float, y1: float, title: str, width: int = W) -> None:
        self.w = width
        self.x0, self.x1 = x0, (x1 if x1 > x0 else x0 + 1)
        self.y0, self.y1 = y0, (y1 if y1 > y0 else y0 + 1)
        self.title = title
        self.parts: list[str] = []

    def x(self, v: float) -> float:
        return round(L + (v - self.x0) / (self.x1 - self.x0) * (self.w - L - R), 2)

    def y(self, v: float) -> float:
        return round(H - B - (v - self.y0) / (self.y1 - self.y0) * (H - T - B), 2)

    def add(self, s: str) -> None:
        self.parts.append(s)

    def axes(self, xticks: list[tuple[float, str]], yticks: list[float], ylabel: str) -> None:
        for v in yticks:
            y = self.y(v)
            self.add(
                f'<line x1="{L}" x2="{self.w - R}" y1="{y}" y2="{y}" stroke="#e3e6ea"/>'
                f'<text x="{L - 6}" y="{y + 4}" text-anchor="end" class="tick">{v:g}</text>'
            )
        for v, label in xticks:
            x = self.x(v)
            self.add(
                f'<line x1="{x}" x2="{x}" y1="{H - B}" y2="{H - B + 4}" stroke="#9aa3ad"/>'
                f'<text x="{x}" y="{H - B + 17}" text-anchor="middle" class="tick">{escape(label)}</text>'
            )
        self.add(
            f'<line x1="{L}" x2="{self.w - R}" y1="{H - B}" y2="{H - B}" stroke="#9aa3ad"/>'
            f'<text x="12" y="{T - 12}" class="axis">{escape(ylabel)}</text>'
        )

    def hline(self, v: float, label: str) -> None:
        y = self.y(v)
        self.add(
            f'<line x1="{L}" x2="{self.w - R}" y1="{y}" y2="{y}" stroke="{THRESHOLD}" stroke-width="1.5" '
            f'stroke-dasharray="6 4"/><text x="{self.w - R - 4}" y="{y - 5}" text-anchor="end" '
            f'class="tick" fill="{THRESHOLD}">{escape(label)}</text>'
        )

    def legend(self, names: list[str]) -> None:
        x = self.w - R
        for i, name in reversed(list(enumerate(names))):
            x -= 26 + 7 * len(name)
            self.add(
                f'<rect x="{x}" y="{T - 22}" width="10" height="10" rx="2" fill="{color(i)}"/>'
                f'<text x="{x + 14}" y="{T - 13}" class="tick">{escape(name)}</text>'
            )

    def render(self) -> Markup:
        body = "".join(self.parts)
        return Markup(
            f'<svg class="chart" viewBox="0 0 {self.w} {H}" role="img" aria-label="{escape(self.title)}" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{escape(self.title)}</title>{body}</svg>'
        )


def empty(message: str) -> Markup:
    return Markup(f'<p class="empty">{escape(message)}</p>')


def _time_ticks(t0: datetime, t1: datetime, tz: tzinfo, every: timedelta, fmt: str) -> list[tuple[float, str]]:
    t = t0.astimezone(tz).replace(minute=0, second=0, microsecond=0)
    step_h = max(int(every.total_seconds() // 3600), 1)
    t += timedelta(hours=(-t.hour) % step_h) if step_h < 24 else timedelta(hours=(-t.hour) % 24)
    ticks = []
    while t <= t1:
        if t >= t0:
            ticks.append((t.timestamp(), t.strftime("%d %b" if t.hour == 0 and step_h < 24 else fmt)))
        t += every
    return ticks


def per_hour(series: dict[str, list[tuple[datetime, int]]], tz: tzinfo) -> Markup:
    """Stacked bars: flagged items per hour, one colour per source."""
    if not series or not any(n for s in series.values() for _, n in s):
        return empty("Nothing flagged in this window.")
    hours = [t for t, _ in next(iter(series.values()))]
    totals = [sum(s[i][1] for s in series.values()) for i in range(len(hours))]
    p = _Plot(
        hours[0].timestamp(),
        (hours[-1] + timedelta(hours=1)).timestamp(),
        0,
        max(totals) * 1.1,
        "Flagged items per hour and source",
    )
    p.axes(
        _time_ticks(hours[0], hours[-1], tz, timedelta(hours=6), "%H:00"),
        nice_ticks(0, max(totals) * 1.1, 4),
        "flagged / hour",
    )
    width = max((W - L - R) / len(hours) - 1.5, 1)
    for i, t in enumerate(hours):
        base = 0
        for k, s in enumerate(series.values()):
            n = s[i][1]
            if n:
                y_top, y_base = p.y(base + n), p.y(base)
                p.add(
                    f'<rect x="{p.x(t.timestamp()) + 0.75}" y="{y_top}" width="{width:.2f}" '
                    f'height="{max(y_base - y_top, 0.5):.2f}" fill="{color(k)}"><title>{escape(list(series)[k])} '
                    f"{t.astimezone(tz):%d %b %H:00}: {n}</title></rect>"
                )
                base += n
    p.legend(list(series))
    return p.render()


def histogram(h: Histogram) -> Markup:
    """Recent frame scores (multiples of the threshold) with the threshold line at 1.0."""
    if h.n == 0:
        return empty("No scored frames recorded yet.")
    top = max(h.counts) * 1.1
    p = _Plot(h.edges[0], h.edges[-1], 0, top, f"Scores of the last {h.n} frames")
    p.axes([(v, f"{v:g}×") for v in nice_ticks(h.edges[0], h.edges[-1], 8)], nice_ticks(0, top, 4), "frames")
    for lo, hi, n in zip(h.edges, h.edges[1:], h.counts):
        if n:
            fill = "#E57373" if lo >= 1.0 else "#78909C"
            p.add(
                f'<rect x="{p.x(lo) + 0.5}" y="{p.y(n)}" width="{max(p.x(hi) - p.x(lo) - 1, 0.5):.2f}" '
                f'height="{p.y(0) - p.y(n):.2f}" fill="{fill}"><title>{lo:.2f}–{hi:.2f}×: {n}</title></rect>'
            )
    x = p.x(1.0)
    p.add(
        f'<line x1="{x}" x2="{x}" y1="{T}" y2="{H - B}" stroke="{THRESHOLD}" stroke-width="2" stroke-dasharray="6 4"/>'
        f'<text x="{x + 5}" y="{T + 10}" class="tick" fill="{THRESHOLD}">threshold</text>'
    )
    return p.render()


def drift(series: dict[str, list[tuple[datetime, DayStats]]], tz: tzinfo) -> Markup:
    """Daily mean of good-frame scores per source, with a ±1 std band and the threshold line."""
    points = [(t, d) for s in series.values() for t, d in s if d.n]
    if not points:
        return empty("No good-frame scores recorded yet.")
    t0, t1 = min(t for t, _ in points), max(t for t, _ in points)
    t1 = max(t1, t0 + timedelta(days=1))
    top = max(1.15, max(d.mean + d.std for _, d in points) * 1.1)
    p = _Plot(t0.timestamp(), t1.timestamp(), 0, top, "Daily mean score of good frames (band: ±1 std)")
    days = max((t1 - t0).days, 1)
    p.axes(
        _time_ticks(t0, t1, tz, timedelta(days=max(days // 7, 1)), "%d %b"),
        nice_ticks(0, top, 4),
        "score (× threshold)",
    )
    p.hline(1.0, "threshold")
    for k, days_ in enumerate(series.values()):
        pts = [(p.x(t.timestamp()), d) for t, d in days_ if d.n]
        band = [f"{x},{p.y(d.mean + d.std)}" for x, d in pts] + [
            f"{x},{p.y(max(d.mean - d.std, 0))}" for x, d in reversed(pts)
        ]
        p.add(f'<polygon points="{" ".join(band)}" fill="{color(k)}" fill-opacity="0.15"/>')
        p.add(
            f'<polyline points="{" ".join(f"{x},{p.y(d.mean)}" for x, d in pts)}" fill="none" '
            f'stroke="{color(k)}" stroke-width="2"/>'
        )
        for (x, d), (t, _) in zip(pts, [(t, d) for t, d in days_ if d.n]):
            p.add(
                f'<circle cx="{x}" cy="{p.y(d.mean)}" r="3" fill="{color(k)}"><title>{t:%d %b}: mean {d.mean:.3f}, '
                f"std {d.std:.3f}, {d.n} frames</title></circle>"
            )
    p.legend(list(series))
    return p.render()


def timeline(points: list[tuple[datetime, float]], at: datetime, tz: tzinfo) -> Markup:
    """Scores of one source's frames around a flagged item; the item's time is marked."""
    if not points:
        return empty("No score samples around this item.")
    t0 = min(min(t for t, _ in points), at)
    t1 = max(max(t for t, _ in points), at)
    top = max(1.2, max(s for _, s in points) * 1.1)
    p = _Plot(t0.timestamp(), t1.timestamp(), 0, top, "Scores of this source around the item", width=1500)
    span = max((t1 - t0).total_seconds(), 60)
    every = timedelta(minutes=max(int(span / 60 / 6), 1))
    ticks = [
        (t0.timestamp() + i * every.total_seconds(), (t0 + i * every).astimezone(tz).strftime("%H:%M"))
        for i in range(int(span / every.total_seconds()) + 1)
    ]
    p.axes(ticks, nice_ticks(0, top, 4), "score (× threshold)")
    p.hline(1.0, "threshold")
    x = p.x(at.timestamp())
    p.add(
        f'<line x1="{x}" x2="{x}" y1="{T}" y2="{H - B}" stroke="#263238" stroke-width="1.5"/>'
        + (
            f'<text x="{x - 5}" y="{T + 10}" text-anchor="end" class="tick">this item</text>'
            if x > p.w * 0.85
            else f'<text x="{x + 5}" y="{T + 10}" class="tick">this item</text>'
        )
    )
    for t, s in points:
        fill = "#E53935" if s >= 1.0 else "#546E7A"
        p.add(f'<circle cx="{p.x(t.timestamp())}" cy="{p.y(min(s, top))}" r="4" fill="{fill}"/>')
    return p.render()
