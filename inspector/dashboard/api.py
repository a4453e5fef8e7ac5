"""The JSON API behind every page (OpenAPI at /openapi.json, readable at /api/docs) and the CSV export.

Reads are open; the one write (a review) needs the token in `Authorization: Bearer <token>` or
`X-Inspector-Token`. A header is never sent by a cross-site form or image, so there is no cookie to
steal and no CSRF surface.
"""

from __future__ import annotations

import csv
import hmac
import io
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from inspector.config.line import NAME
from inspector.dashboard import queries as q
from inspector.dashboard.review import NotFound, ReviewConflict, review

router = APIRouter(prefix="/api", tags=["api"])
ItemId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Flagged item id.")]


def _utc(t: datetime | None) -> datetime | None:
    """API times without a zone are UTC."""
    return None if t is None else (t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t)


def filters(
    source: Annotated[str | None, Query(pattern=NAME, description="Only this source.")] = None,
    status: Annotated[q.Status | None, Query(description="Review status.")] = None,
    since: Annotated[datetime | None, Query(description="Flagged at or after (ISO 8601; no zone = UTC).")] = None,
    until: Annotated[datetime | None, Query(description="Flagged before (ISO 8601; no zone = UTC).")] = None,
    min_score: Annotated[float | None, Query(ge=0, le=1e9, description="Score at least (× threshold).")] = None,
    max_score: Annotated[float | None, Query(ge=0, le=1e9, description="Score at most (× threshold).")] = None,
) -> q.Filters:
    return q.Filters(source, status, _utc(since), _utc(until), min_score, max_score)


def require_token(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_inspector_token: Annotated[str | None, Header()] = None,
) -> None:
    """Constant-time check of the review token; the token itself is never echoed or logged."""
    expected: str | None = request.app.state.ctx.token
    if expected is None:
        raise HTTPException(
            403,
            "reviews are disabled: start the dashboard with a token "
            "(INSPECTOR_TOKEN or dashboard.token in the line config)",
        )
    given = x_inspector_token or ""
    if authorization and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, "a valid review token is required", headers={"WWW-Authenticate": "Bearer"})


class ItemPage(BaseModel):
    items: list[q.Item]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null on the last page.")
    count: int | None = Field(None, description="Matching items (with count=true), at most `count_cap`.")
    count_capped: bool = False


class ItemDetail(BaseModel):
    item: q.Item
    older: list[q.Item] = Field(description="Previous flagged items of the same source, nearest first.")
    newer: list[q.Item] = Field(description="Next flagged items of the same source, nearest first.")
    urls: dict[str, str | None] = Field(
        description="Image URLs: original, overlay, heatmap (null when not saved), thumb."
    )


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: q.Status = Field(description="confirmed (a real defect), false_alarm (a good part), or pending (undo).")
    reviewer: str = Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$", description="Who reviewed.")
    note: str | None = Field(None, max_length=2000, description="Optional note.")


class SourceOut(BaseModel):
    source: str
    scored: int
    flagged: int
    dropped: int
    errors: int
    last_score: float | None
    last_seen: datetime | None


def urls(item: q.Item) -> dict[str, str | None]:
    """Where the item's images are served; null for images never saved (a camera frame flagged while the media
    folder could not be written)."""
    return {
        "original": f"/media/{item.image_path}" if item.image_path else None,
        "overlay": f"/media/{item.overlay_path}" if item.overlay_path else None,
        "heatmap": f"/heatmaps/{item.id}.png" if item.map_path else None,
        "thumb": f"/thumbs/{item.id}.jpg" if item.overlay_path else None,
    }


@router.get("/items", response_model=ItemPage, summary="Flagged items, newest first (keyset pagination)")
def list_items(
    request: Request,
    f: Annotated[q.Filters, Depends(filters)],
    cursor: Annotated[str | None, Query(max_length=40, description="From a previous page's next_cursor.")] = None,
    after_id: Annotated[int | None, Query(ge=0, description="Only items recorded after this id (polling).")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 48,
    count: bool = False,
) -> ItemPage:
    engine = request.app.state.ctx.store.engine
    if after_id is not None:
        return ItemPage(items=q.items_after_id(engine, f, after_id, limit), next_cursor=None)
    try:
        cur = q.Cursor.decode(cursor) if cursor else None
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    page = q.list_items(engine, f, cur, limit)
    n, capped = q.count_items(engine, f) if count else (None, False)
    return ItemPage(items=page.items, next_cursor=page.next_cursor, count=n, count_capped=capped)


@router.get("/items/{item_id}", response_model=ItemDetail, summary="One flagged item with its neighbours in time")
def get_item(request: Request, item_id: ItemId) -> ItemDetail:
    engine = request.app.state.ctx.store.engine
    item = q.get_item(engine, item_id)
    if item is None:
        raise HTTPException(404, f"no flagged item {item_id}")
    older, newer = q.neighbours(engine, item)
    return ItemDetail(item=item, older=older, newer=newer, urls=urls(item))


@router.post(
    "/items/{item_id}/review",
    response_model=q.Item,
    dependencies=[Depends(require_token)],
    summary="Mark an item a confirmed defect or a false alarm (needs the token)",
)
def review_item(request: Request, item_id: ItemId, body: ReviewIn) -> q.Item:
    ctx = request.app.state.ctx
    try:
        item = review(ctx.store, ctx.retrain_dir, item_id, body.status, body.reviewer.strip(), body.note)
        ctx.forget_stats()
        return item
    except NotFound:
        raise HTTPException(404, f"no flagged item {item_id}") from None
    except ReviewConflict as e:
        raise HTTPException(409, str(e)) from None


@router.get("/sources", response_model=list[SourceOut], summary="Per-source counters")
def sources(request: Request) -> list[SourceOut]:
    return [SourceOut(source=k, **v) for k, v in request.app.state.ctx.store.counters().items()]


@router.get("/stats", summary="Flagged per hour, score histogram, false-alarm rate, good-score drift")
def stats(
    request: Request,
    source: Annotated[str | None, Query(pattern=NAME)] = None,
    hours: Annotated[int, Query(ge=1, le=24 * 31)] = 48,
    days: Annotated[int, Query(ge=1, le=365)] = 30,
) -> dict:
    ctx = request.app.state.ctx
    s = ctx.stats(source, hours, days)
    return {
        "per_hour": {k: [{"hour": t, "flagged": n} for t, n in v] for k, v in s.per_hour.items()},
        "histogram": {
            "edges": s.histogram.edges,
            "counts": s.histogram.counts,
            "n": s.histogram.n,
            "above_threshold": s.histogram.above,
            "threshold": 1.0,
        },
        "reviews": [
            {
                "source": r.source,
                "confirmed": r.confirmed,
                "false_alarm": r.false_alarm,
                "pending": r.pending,
                "false_alarm_rate": r.rate,
            }
            for r in s.reviews
        ],
        "drift": {k: [{"day": t, "n": d.n, "mean": d.mean, "std": d.std} for t, d in v] for k, v in s.drift.items()},
    }


CSV_COLUMNS = [
    "id",
    "created_at",
    "source",
    "score",
    "raw_score",
    "threshold",
    "model_version",
    "review_status",
    "reviewed_by",
    "reviewed_at",
    "review_note",
    "origin",
    "image_path",
    "width",
    "height",
    "frame_key",
]


def _cell(v: object) -> object:
    """Text a spreadsheet would run as a formula (=, +, -, @) is prefixed with a quote."""
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + v
    return v


def _csv_rows(items: Iterator[q.Item]) -> Iterator[str]:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for n, item in enumerate(items, 1):
        w.writerow([_cell(getattr(item, c)) for c in CSV_COLUMNS])
        if n % 500 == 0:
            yield buf.getvalue()
            buf.seek(0), buf.truncate()
    yield buf.getvalue()


@router.get("/export.csv", summary="CSV of the flagged items matching the filters", response_class=StreamingResponse)
def export_csv(request: Request, f: Annotated[q.Filters, Depends(filters)]) -> StreamingResponse:
    engine = request.app.state.ctx.store.engine
    name = f"flagged-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.csv"
    return StreamingResponse(
        _csv_rows(q.iter_items(engine, f)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
