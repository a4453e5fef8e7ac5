"""API and page of the latent space: similar items, defect kinds with bulk review, the map, latent drift."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from inspector.dashboard import queries as q
from inspector.dashboard.api import ItemId, require_token
from inspector.dashboard.pages import _render
from inspector.dashboard.review import NotFound, ReviewConflict, review_many

router = APIRouter(tags=["latent"])
GROUPS_SHOWN = 50  # rows of the page's group table (the API lists all)
Version = Annotated[
    str | None, Query(max_length=64, pattern=r"^[\w.\-]+$", description="Model version (default: the newest).")
]


class Neighbour(BaseModel):
    item: q.Item
    distance: float = Field(description="Euclidean distance of the unit embeddings (0 same, 2 opposite).")


class Similar(BaseModel):
    embedded: bool = Field(description="False for items recorded before embeddings were kept (or by an older export).")
    model_version: str | None
    neighbours: list[Neighbour]
    suggestion: dict | None = Field(
        description="verdict, votes, reviewed, of, text; null when no neighbour is reviewed."
    )


class GroupOut(BaseModel):
    id: int
    count: int
    exemplars: list[int]
    members: list[int]
    confirmed: int
    false_alarm: int
    pending: int
    reviewed_share: float


class BulkReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_ids: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] = Field(min_length=1, max_length=5000)
    status: q.Status
    reviewer: str = Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
    note: str | None = Field(None, max_length=2000)


def _version(request: Request, version: str | None) -> str:
    v = version or request.app.state.ctx.latent.latest_version()
    if v is None:
        raise HTTPException(
            404, "no embeddings in this store yet (the watcher keeps them from models exported with one)"
        )
    return v


@router.get("/api/items/{item_id}/similar", response_model=Similar, summary="The most similar past flagged items")
def similar(request: Request, item_id: ItemId, k: Annotated[int, Query(ge=1, le=100)] = 8) -> Similar:
    ctx = request.app.state.ctx
    if q.get_item(ctx.store.engine, item_id) is None:
        raise HTTPException(404, f"no flagged item {item_id}")
    return Similar(**ctx.latent.similar(item_id, k))


@router.get("/api/latent/groups", response_model=list[GroupOut], summary="Defect kinds: flagged items grouped")
def groups(request: Request, version: Version = None) -> list[GroupOut]:
    gs = request.app.state.ctx.latent.groups(_version(request, version))
    return [
        GroupOut(
            id=g.id,
            count=g.count,
            exemplars=g.exemplars,
            members=g.members,
            confirmed=g.confirmed,
            false_alarm=g.false_alarm,
            pending=g.pending,
            reviewed_share=g.reviewed_share,
        )
        for g in gs
    ]


@router.post(
    "/api/latent/review",
    dependencies=[Depends(require_token)],
    summary="Review many items at once (a group, a lasso selection); needs the token",
)
def bulk_review(request: Request, body: BulkReviewIn) -> dict:
    ctx = request.app.state.ctx
    try:
        ids = review_many(ctx.store, ctx.retrain_dir, body.item_ids, body.status, body.reviewer.strip(), body.note)
    except NotFound as e:
        raise HTTPException(404, f"no flagged item {e.args[0]}; nothing was reviewed") from None
    except ReviewConflict as e:
        raise HTTPException(409, f"{e}; nothing was reviewed") from None
    ctx.forget_stats()
    return {"reviewed": ids, "status": body.status}


@router.get("/api/latent/map.bin", summary="The latent map's points (compact binary, see the header)")
def map_bin(
    request: Request, version: Version = None, recent: Annotated[int, Query(ge=1, le=200_000)] = 100_000
) -> Response:
    data = request.app.state.ctx.latent.map_payload(_version(request, version), recent)
    return Response(data, media_type="application/octet-stream", headers={"Cache-Control": "no-store"})


@router.get("/api/latent/drift", summary="Latent drift of good frames per source and day")
def drift(request: Request, version: Version = None, days: Annotated[int, Query(ge=1, le=365)] = 30) -> dict:
    ctx = request.app.state.ctx
    v = _version(request, version)
    return {
        "version": v,
        "statistic": "|mean(day) - mean(good cloud)| / spread(good cloud)",
        "sources": ctx.latent.drift(v, ctx.tz, days),
    }


@router.get("/latent", response_class=HTMLResponse, include_in_schema=False)
def latent_page(request: Request, version: Version = None) -> HTMLResponse:
    ctx = request.app.state.ctx
    v = version or ctx.latent.latest_version()
    groups = ctx.latent.groups(v) if v else []
    # the largest groups only: thousands of table rows (each with thumbnails) would hold the page back
    return _render(
        request, "latent.html", version=v, groups=groups[:GROUPS_SHOWN], more_groups=len(groups) - GROUPS_SHOWN
    )
