"""Aggregates for the stats page: flagged per hour, recent score histogram, false-alarm rate, drift.

Grouping happens in SQL per UTC hour (both backends), so a page costs one pass over an indexed time
window rather than shipping rows to Python; days are assembled from hours in the display time zone.
Drift uses mean and standard deviation (sums of x and x^2), which both backends aggregate natively.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo

import numpy as np
import sqlalchemy as sa

from inspector.io.schema import Flagged, ScoreSample


@dataclass(frozen=True)
class Histogram:
    edges: list[float]  # in multiples of the threshold
    counts: list[int]
    n: int
    above: int  # samples at or over the threshold


@dataclass(frozen=True)
class ReviewRate:
    source: str
    confirmed: int
    false_alarm: int
    pending: int

    @property
    def rate(self) -> float | None:
        """False alarms among reviewed items (None before any review)."""
        done = self.confirmed + self.false_alarm
        return self.false_alarm / done if done else None


@dataclass
class DayStats:
    n: int = 0
    s: float = 0.0
    ss: float = 0.0

    @property
    def mean(self) -> float:
        return self.s / self.n

    @property
    def std(self) -> float:
        return math.sqrt(max(self.ss / self.n - self.mean**2, 0.0))


@dataclass(frozen=True)
class Stats:
    per_hour: dict[str, list[tuple[datetime, int]]]
    histogram: Histogram
    reviews: list[ReviewRate]
    drift: dict[str, list[tuple[datetime, DayStats]]] = field(default_factory=dict)


def _hour(col, dialect: str):
    """UTC hour bucket as text 'YYYY-MM-DD HH' on both backends."""
    if dialect == "sqlite":
        return sa.func.strftime("%Y-%m-%d %H", col)
    return sa.func.to_char(sa.func.date_trunc("hour", col), "YYYY-MM-DD HH24")


def _parse_hour(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H").replace(tzinfo=timezone.utc)


def flagged_per_hour(
    engine: sa.Engine, since: datetime, source: str | None = None
) -> dict[str, list[tuple[datetime, int]]]:
    """{source: [(hour start UTC, flagged), ...]} with empty hours filled with 0."""
    h = _hour(Flagged.created_at, engine.dialect.name).label("h")
    q = sa.select(Flagged.source, h, sa.func.count()).where(Flagged.created_at >= since)
    if source:
        q = q.where(Flagged.source == source)
    with engine.connect() as c:
        rows = c.execute(q.group_by(Flagged.source, h)).all()
    start = since.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
    hours = [
        start + timedelta(hours=i) for i in range(int((datetime.now(timezone.utc) - start) / timedelta(hours=1)) + 1)
    ]
    counts: dict[str, dict[datetime, int]] = defaultdict(dict)
    for src, hour, n in rows:
        counts[src][_parse_hour(hour)] = int(n)
    return {src: [(t, by.get(t, 0)) for t in hours] for src, by in sorted(counts.items())}


def score_histogram(engine: sa.Engine, source: str | None = None, recent: int = 20_000, bins: int = 40) -> Histogram:
    """Histogram of the most recent scored frames (normalized scores, 1.0 = threshold)."""
    q = sa.select(ScoreSample.score)
    q = (
        q.where(ScoreSample.source == source).order_by(ScoreSample.created_at.desc())
        if source
        else q.order_by(ScoreSample.id.desc())
    )
    with engine.connect() as c:
        scores = np.fromiter(c.scalars(q.limit(recent)), dtype=np.float64)
    if scores.size == 0:
        return Histogram([0.0, 2.0], [0], 0, 0)
    top = max(2.0, float(np.quantile(scores, 0.995)) * 1.05)
    counts, edges = np.histogram(np.clip(scores, 0.0, top), bins=bins, range=(0.0, top))
    return Histogram([float(e) for e in edges], [int(c) for c in counts], int(scores.size), int((scores >= 1.0).sum()))


def review_rates(engine: sa.Engine, since: datetime | None = None, source: str | None = None) -> list[ReviewRate]:
    """Review outcome counts per source (flagged since `since`), for the false-alarm rate."""
    q = sa.select(Flagged.source, Flagged.review_status, sa.func.count())
    if since is not None:
        q = q.where(Flagged.created_at >= since)
    if source:
        q = q.where(Flagged.source == source)
    with engine.connect() as c:
        rows = c.execute(q.group_by(Flagged.source, Flagged.review_status)).all()
    by: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for src, status, n in rows:
        by[src][status] += int(n)
    return [ReviewRate(s, d["confirmed"], d["false_alarm"], d["pending"]) for s, d in sorted(by.items())]


def good_score_drift(
    engine: sa.Engine, since: datetime, tz: tzinfo, source: str | None = None
) -> dict[str, list[tuple[datetime, DayStats]]]:
    """Per source and local day: mean and spread of the scores of frames that were not anomalous."""
    h = _hour(ScoreSample.created_at, engine.dialect.name).label("h")
    q = sa.select(
        ScoreSample.source,
        h,
        sa.func.count(),
        sa.func.sum(ScoreSample.score),
        sa.func.sum(ScoreSample.score * ScoreSample.score),
    ).where(ScoreSample.created_at >= since, ScoreSample.is_anomaly == sa.false())
    if source:
        q = q.where(ScoreSample.source == source)
    with engine.connect() as c:
        rows = c.execute(q.group_by(ScoreSample.source, h)).all()
    days: dict[str, dict[datetime, DayStats]] = defaultdict(lambda: defaultdict(DayStats))
    for src, hour, n, s, ss in rows:
        local = _parse_hour(hour).astimezone(tz)
        d = days[src][local.replace(hour=0, minute=0, second=0, microsecond=0)]
        d.n, d.s, d.ss = d.n + int(n), d.s + float(s), d.ss + float(ss)
    return {src: sorted(by.items()) for src, by in sorted(days.items())}


def compute(engine: sa.Engine, tz: tzinfo, hours: int = 48, days: int = 30, source: str | None = None) -> Stats:
    now = datetime.now(timezone.utc)
    return Stats(
        per_hour=flagged_per_hour(engine, now - timedelta(hours=hours), source),
        histogram=score_histogram(engine, source),
        reviews=review_rates(engine, now - timedelta(days=days), source),
        drift=good_score_drift(engine, now - timedelta(days=days), tz, source),
    )


def scores_around(
    engine: sa.Engine, source: str, at: datetime, minutes: float = 10, limit: int = 2000
) -> list[tuple[datetime, float]]:
    """Score samples of one source within ±`minutes` of `at` (the item page's timeline)."""
    span = timedelta(minutes=minutes)
    q = (
        sa.select(ScoreSample.created_at, ScoreSample.score)
        .where(ScoreSample.source == source, ScoreSample.created_at >= at - span, ScoreSample.created_at <= at + span)
        .order_by(ScoreSample.created_at)
        .limit(limit)
    )
    with engine.connect() as c:
        return [(t, float(s)) for t, s in c.execute(q)]
