"""Server-rendered HTML pages: flagged list, item detail, stats, API docs.

Pages call the same query functions as the JSON API. Form input is parsed leniently (a bad value is
dropped with a visible note instead of an error page), since people type it; the API is strict.
"""

from __future__ import annotations

import os
import re
from datetime import date, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from inspector.dashboard import charts
from inspector.dashboard import queries as q
from inspector.dashboard.api import urls
from inspector.io import stats as st

router = APIRouter(include_in_schema=False)
STATUS_LABELS = {"pending": "Pending", "confirmed": "Defect confirmed", "false_alarm": "False alarm"}
WINDOWS = {
    "1h": timedelta(hours=1),
    "8h": timedelta(hours=8),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
_SOURCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FORM_KEYS = ("source", "status", "window", "since", "until", "min_score", "max_score")


def local_tz() -> tzinfo:
    """The server's zone (DST-aware when it can be named): pages show plant time, not UTC."""
    for name in (os.environ.get("TZ", "").lstrip(":"), _zone_of_localtime()):
        try:
            if name:
                return ZoneInfo(name)
        except (ValueError, OSError):
            pass
    return datetime.now().astimezone().tzinfo or timezone.utc


def _zone_of_localtime() -> str:
    try:
        target = os.readlink("/etc/localtime")
    except OSError:
        return ""
    return target.split("zoneinfo/", 1)[1] if "zoneinfo/" in target else ""


def setup_templates(folder: Path, static_version: str) -> Jinja2Templates:
    t = Jinja2Templates(directory=str(folder))
    t.env.globals.update(STATUS_LABELS=STATUS_LABELS, v=static_version)
    t.env.filters.update(mult=lambda x: f"{x:.2f}×", score_class=_score_class)
    return t


def _score_class(x: float) -> str:
    return "s-high" if x >= 2 else "s-mid" if x >= 1.3 else "s-low"


def _ctx(request: Request):
    return request.app.state.ctx


def _render(request: Request, name: str, **context) -> HTMLResponse:
    ctx = _ctx(request)
    tz = ctx.tz

    def when(t: datetime | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
        return "" if t is None else t.astimezone(tz).strftime(fmt)

    def short(t: datetime) -> str:
        local = t.astimezone(tz)
        return local.strftime("%H:%M:%S" if local.date() == datetime.now(tz).date() else "%d %b %H:%M")

    base = {
        "when": when,
        "short": short,
        "reviews_enabled": ctx.token is not None,
        "tz_name": datetime.now(tz).strftime("%Z") or str(tz),
    }
    resp = ctx.templates.TemplateResponse(request, name, {**base, **context})
    resp.headers["Cache-Control"] = "no-cache"
    return resp


def page_filters(params, tz: tzinfo, now: datetime) -> tuple[q.Filters, dict[str, str], list[str]]:
    """(filters, form values to show again, notes about values that were ignored)."""
    form = {k: params.get(k, "").strip() for k in FORM_KEYS}
    notes: list[str] = []

    def drop(key: str, why: str) -> None:
        notes.append(f"{key}: {why}; ignored")
        form[key] = ""

    if form["source"] and not _SOURCE.match(form["source"]):
        drop("source", "not a source name")
    if form["status"] and form["status"] not in STATUS_LABELS:
        drop("status", "unknown status")
    if form["window"] and form["window"] not in WINDOWS:
        drop("window", "unknown window")
    times = {}
    for key in ("since", "until"):
        try:
            times[key] = datetime.fromisoformat(form[key]).replace(tzinfo=tz) if form[key] else None
        except ValueError:
            drop(key, "not a date and time")
            times[key] = None
    scores = {}
    for key in ("min_score", "max_score"):
        try:
            scores[key] = float(form[key]) if form[key] else None
            if scores[key] is not None and not 0 <= scores[key] <= 1e9:
                raise ValueError
        except ValueError:
            drop(key, "not a number ≥ 0")
            scores[key] = None
    since = now - WINDOWS[form["window"]] if form["window"] else times["since"]
    f = q.Filters(
        form["source"] or None, form["status"] or None, since, times["until"], scores["min_score"], scores["max_score"]
    )  # type: ignore[arg-type]
    return f, form, notes


def query_string(form: dict[str, str], **extra: str) -> str:
    return urlencode({k: v for k, v in {**form, **extra}.items() if v})


@router.get("/", response_class=HTMLResponse)
def flagged(request: Request) -> HTMLResponse:
    ctx = _ctx(request)
    f, form, notes = page_filters(request.query_params, ctx.tz, datetime.now(timezone.utc))
    cursor_text = request.query_params.get("cursor", "")
    try:
        cursor = q.Cursor.decode(cursor_text) if cursor_text else None
    except ValueError:
        notes.append("cursor: malformed; showing the newest items")
        cursor = None
    page = q.list_items(ctx.store.engine, f, cursor)
    count, capped = q.count_items(ctx.store.engine, f)
    return _render(
        request,
        "list.html",
        page=page,
        count=count,
        capped=capped,
        form=form,
        notes=notes,
        sources=q.sources(ctx.store.engine),
        first_page=cursor is None,
        newest_id=max((i.id for i in page.items), default=0),
        qs=query_string(form),
        next_qs=query_string(form, cursor=page.next_cursor or ""),
        windows=list(WINDOWS),
    )


@router.get("/fragments/new", response_class=HTMLResponse)
def new_cards(request: Request) -> HTMLResponse:
    """Cards recorded after `after_id` that match the filters: the list page polls this."""
    ctx = _ctx(request)
    f, _, _ = page_filters(request.query_params, ctx.tz, datetime.now(timezone.utc))
    try:
        after = max(int(request.query_params.get("after_id", "0")), 0)
    except ValueError:
        raise HTTPException(422, "after_id must be an integer") from None
    items = q.items_after_id(ctx.store.engine, f, after)
    return _render(request, "cards.html", items=items, fresh=True)


@router.get("/items/{item_id}", response_class=HTMLResponse)
def item_page(request: Request, item_id: Annotated[int, PathParam(ge=1, le=2**31 - 1)]) -> HTMLResponse:
    ctx = _ctx(request)
    item = q.get_item(ctx.store.engine, item_id)
    if item is None:
        raise HTTPException(404, f"No flagged item {item_id}.")
    older, newer = q.neighbours(ctx.store.engine, item)
    copy = q.retrain_copy(ctx.store.engine, item_id)
    timeline = charts.timeline(
        st.scores_around(ctx.store.engine, item.source, item.created_at), item.created_at, ctx.tz
    )
    return _render(
        request,
        "item.html",
        item=item,
        older=older,
        newer=newer,
        urls=urls(item),
        timeline=timeline,
        retrain_name=Path(copy).name if copy else None,
        similar=ctx.latent.similar(item_id),
    )


@router.get("/stats", response_class=HTMLResponse)
def stats_page(request: Request) -> HTMLResponse:
    ctx = _ctx(request)
    source = request.query_params.get("source", "")
    source = source if _SOURCE.match(source) else ""
    hours = _choice(request.query_params.get("hours"), (24, 48, 168), 48)
    days = _choice(request.query_params.get("days"), (7, 30, 90), 30)
    s = ctx.stats(source or None, hours, days)
    counters = ctx.store.counters()
    return _render(
        request,
        "stats.html",
        s=s,
        source=source,
        hours=hours,
        days=days,
        sources=sorted(counters),
        counters=counters if not source else {k: v for k, v in counters.items() if k == source},
        per_hour=charts.per_hour(s.per_hour, ctx.tz),
        histogram=charts.histogram(s.histogram),
        drift=charts.drift(s.drift, ctx.tz),
        today=date.today(),
        latent_drift=_latent_drift(ctx, source, days),
    )


def _latent_drift(ctx, source: str, days: int) -> dict:
    """Latent drift rows per source of the newest embedded version (docs/latent-space.md); {} without embeddings."""
    version = ctx.latent.latest_version()
    rows = ctx.latent.drift(version, ctx.tz, days) if version else {}
    return {"version": version, "rows": {k: v for k, v in rows.items() if not source or k == source}}


def _choice(text: str | None, allowed: tuple[int, ...], default: int) -> int:
    return int(text) if text and text.isdigit() and int(text) in allowed else default


@router.get("/api/docs", response_class=HTMLResponse)
def api_docs(request: Request) -> HTMLResponse:
    """The OpenAPI description as a plain page: works offline, unlike CDN-hosted Swagger UI."""
    spec = request.app.openapi()
    ops = [(path, method.upper(), op) for path, methods in spec["paths"].items() for method, op in methods.items()]
    return _render(request, "api_docs.html", spec=spec, ops=ops)
