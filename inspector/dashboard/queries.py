"""Read queries over the store's `flagged` table, shared by the HTML pages, the JSON API and the CSV export.

Lists use keyset pagination on (created_at, id), newest first: the cost of a page does not grow with how
far back the reader is, which keeps page 2,000 of a 100,000-row store as fast as page 1.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict

from inspector.io.schema import Flagged, RetrainCopy, SourceCounters

Status = Literal["pending", "confirmed", "false_alarm"]
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_CURSOR = re.compile(r"^(\d{1,17})-(\d{1,18})$")  # 10^17 us: year 5138, no overflow
_COLUMNS = [
    Flagged.id,
    Flagged.source,
    Flagged.created_at,
    Flagged.score,
    Flagged.raw_score,
    Flagged.threshold,
    Flagged.model_version,
    Flagged.image_path,
    Flagged.overlay_path,
    Flagged.map_path,
    Flagged.width,
    Flagged.height,
    Flagged.origin,
    Flagged.review_status,
    Flagged.reviewed_by,
    Flagged.reviewed_at,
    Flagged.review_note,
    Flagged.frame_key,
]


class Item(BaseModel):
    """One flagged item as the API returns it. `score` is a multiple of the threshold (1.0 = threshold)."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    source: str
    created_at: datetime
    score: float
    raw_score: float
    threshold: float
    model_version: str
    image_path: str | None  # None: a camera frame whose images could not be saved
    overlay_path: str | None
    map_path: str | None
    width: int
    height: int
    origin: str | None
    review_status: str
    reviewed_by: str | None
    reviewed_at: datetime | None
    review_note: str | None
    frame_key: str


@dataclass(frozen=True)
class Filters:
    source: str | None = None
    status: Status | None = None
    since: datetime | None = None  # UTC-aware
    until: datetime | None = None
    min_score: float | None = None
    max_score: float | None = None

    def where(self) -> list[sa.ColumnElement[bool]]:
        conds = []
        if self.source:
            conds.append(Flagged.source == self.source)
        if self.status:
            conds.append(Flagged.review_status == self.status)
        if self.since is not None:
            conds.append(Flagged.created_at >= self.since)
        if self.until is not None:
            conds.append(Flagged.created_at < self.until)
        if self.min_score is not None:
            conds.append(Flagged.score >= self.min_score)
        if self.max_score is not None:
            conds.append(Flagged.score <= self.max_score)
        return conds


@dataclass(frozen=True)
class Cursor:
    """Position after the last item of a page: (created_at, id) of that item."""

    created_at: datetime
    id: int

    def encode(self) -> str:
        return f"{(self.created_at - _EPOCH) // timedelta(microseconds=1)}-{self.id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Raises ValueError on anything but '<microseconds>-<id>' (cursors come from URLs)."""
        m = _CURSOR.match(text)
        if not m:
            raise ValueError("cursor must look like 1772366400000000-1234")
        return cls(_EPOCH + timedelta(microseconds=int(m.group(1))), int(m.group(2)))


@dataclass(frozen=True)
class Page:
    items: list[Item]
    next_cursor: str | None  # None on the last page


def _items(rows) -> list[Item]:
    return [Item.model_validate(dict(r._mapping)) for r in rows]


def list_items(engine: sa.Engine, f: Filters, cursor: Cursor | None = None, limit: int = 48) -> Page:
    """One page, newest first, strictly after `cursor`."""
    q = sa.select(*_COLUMNS).where(*f.where())
    if cursor is not None:  # the plain bound lets an index range-scan from the cursor; the OR alone reads from the top
        q = q.where(
            Flagged.created_at <= cursor.created_at,
            sa.or_(
                Flagged.created_at < cursor.created_at,
                sa.and_(Flagged.created_at == cursor.created_at, Flagged.id < cursor.id),
            ),
        )
    q = q.order_by(Flagged.created_at.desc(), Flagged.id.desc()).limit(limit + 1)
    with engine.connect() as c:
        items = _items(c.execute(q))
    more = len(items) > limit
    items = items[:limit]
    nxt = Cursor(items[-1].created_at, items[-1].id).encode() if more and items else None
    return Page(items, nxt)


def items_after_id(engine: sa.Engine, f: Filters, after_id: int, limit: int = 48) -> list[Item]:
    """Items recorded after `after_id` (ids grow with insertion): what the list page polls for."""
    q = sa.select(*_COLUMNS).where(Flagged.id > after_id, *f.where()).order_by(Flagged.id.desc()).limit(limit)
    with engine.connect() as c:
        return _items(c.execute(q))


def iter_items(engine: sa.Engine, f: Filters, batch: int = 2000) -> Iterator[Item]:
    """Every matching item, newest first, in keyset batches (the CSV export streams this)."""
    cursor = None
    while True:
        page = list_items(engine, f, cursor, batch)
        yield from page.items
        if page.next_cursor is None:
            return
        cursor = Cursor.decode(page.next_cursor)


def count_items(engine: sa.Engine, f: Filters, cap: int = 10_000) -> tuple[int, bool]:
    """(count, capped): counting stops at `cap` so a broad filter stays cheap on a big store."""
    inner = sa.select(Flagged.id).where(*f.where()).limit(cap + 1).subquery()
    with engine.connect() as c:
        n = int(c.scalar(sa.select(sa.func.count()).select_from(inner)) or 0)
    return min(n, cap), n > cap


def get_item(engine: sa.Engine, item_id: int) -> Item | None:
    with engine.connect() as c:
        rows = _items(c.execute(sa.select(*_COLUMNS).where(Flagged.id == item_id)))
    return rows[0] if rows else None


def neighbours(engine: sa.Engine, item: Item, n: int = 4) -> tuple[list[Item], list[Item]]:
    """(older, newer) flagged items of the same source, nearest first."""
    same = Flagged.source == item.source
    older = sa.and_(
        Flagged.created_at <= item.created_at,
        sa.or_(  # the plain bounds: see list_items
            Flagged.created_at < item.created_at, sa.and_(Flagged.created_at == item.created_at, Flagged.id < item.id)
        ),
    )
    newer = sa.and_(
        Flagged.created_at >= item.created_at,
        sa.or_(
            Flagged.created_at > item.created_at, sa.and_(Flagged.created_at == item.created_at, Flagged.id > item.id)
        ),
    )
    q_old = sa.select(*_COLUMNS).where(same, older).order_by(Flagged.created_at.desc(), Flagged.id.desc()).limit(n)
    q_new = sa.select(*_COLUMNS).where(same, newer).order_by(Flagged.created_at.asc(), Flagged.id.asc()).limit(n)
    with engine.connect() as c:
        return _items(c.execute(q_old)), _items(c.execute(q_new))


def sources(engine: sa.Engine) -> list[str]:
    """Known sources, from the per-source counters (one row per source, cheaper than DISTINCT)."""
    with engine.connect() as c:
        return list(c.scalars(sa.select(SourceCounters.source).order_by(SourceCounters.source)))


def retrain_copy(engine: sa.Engine, item_id: int) -> str | None:
    """Where a reviewed false alarm was copied for the next retrain, if it was."""
    with engine.connect() as c:
        return c.scalar(sa.select(RetrainCopy.path).where(RetrainCopy.flagged_id == item_id))
