"""The dashboard's FastAPI app: pages, JSON API, images from the store's media folder, security headers.

`create_app` takes an open Store, so tests, the benchmark and `inspector dashboard` build the same app.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from inspector.dashboard import files
from inspector.dashboard.api import router as api_router
from inspector.dashboard.latent import Latent
from inspector.dashboard.latent_api import router as latent_router
from inspector.dashboard.pages import local_tz, setup_templates
from inspector.dashboard.pages import router as pages_router
from inspector.dashboard.queries import get_item
from inspector.io import stats
from inspector.io.store import Store

HERE = Path(__file__).parent
CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
ItemId = Annotated[int, PathParam(ge=1, le=2**31 - 1)]


@dataclass
class Ctx:
    """What every request needs; kept on app.state."""

    store: Store
    token: str | None
    retrain_dir: Path
    tz: tzinfo
    templates: Jinja2Templates
    stats_ttl_s: float = 10.0
    latent: Latent | None = None  # similar items, defect kinds, the map, latent drift
    _cache: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def stats(self, source: str | None, hours: int = 48, days: int = 30) -> stats.Stats:
        """Stats scan whole time windows: cache them briefly; a review clears the cache."""
        key = (source, hours, days)
        with self._lock:
            hit = self._cache.get(key)
        if hit and time.monotonic() - hit[0] < self.stats_ttl_s:
            return hit[1]
        value = stats.compute(self.store.engine, self.tz, hours, days, source)
        with self._lock:
            self._cache[key] = (time.monotonic(), value)
        return value

    def forget_stats(self) -> None:
        with self._lock:
            self._cache.clear()


class SecurityHeaders:
    """Pure ASGI middleware (no per-request task overhead) adding CSP and friends to every response."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(
    store: Store,
    token: str | None,
    retrain_dir: Path,
    *,
    trusted_hosts: list[str] | None = None,
    tz: tzinfo | None = None,
) -> FastAPI:
    """The whole dashboard for one store. `token=None` makes it read-only."""
    app = FastAPI(
        title="inspector dashboard",
        version="1",
        docs_url=None,
        redoc_url=None,
        description="Review flagged items, mark false alarms, see rates and drift. Reads are open; "
        "reviews need the token in the header Authorization: Bearer <token>.",
    )
    templates = setup_templates(HERE / "templates", static_version(HERE / "static"))
    app.state.ctx = Ctx(store, token, retrain_dir, tz or local_tz(), templates, latent=Latent(store.engine))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(api_router)
    app.include_router(latent_router)
    app.include_router(pages_router)
    _media_routes(app)
    app.add_exception_handler(StarletteHTTPException, _errors)
    app.add_middleware(SecurityHeaders)
    if trusted_hosts:  # bound to loopback: refuse other Host headers (DNS rebinding)
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=trusted_hosts)
    return app


def static_version(folder: Path) -> str:
    """A hash of the static files, appended to their URLs so browsers never run stale JS."""
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        h.update(p.read_bytes())
    return h.hexdigest()[:10]


async def _errors(request: Request, exc: StarletteHTTPException) -> Response:
    """JSON for the API, a small page for people."""
    if request.url.path.startswith("/api") or "text/html" not in request.headers.get("accept", ""):
        return await http_exception_handler(request, exc)
    ctx: Ctx = request.app.state.ctx
    return ctx.templates.TemplateResponse(
        request, "error.html", {"status": exc.status_code, "detail": exc.detail}, status_code=exc.status_code
    )


def _media_routes(app: FastAPI) -> None:
    cache = {"Cache-Control": "private, max-age=86400"}

    @app.get("/media/{rel:path}", include_in_schema=True, tags=["images"], summary="An image from the media folder")
    def media(request: Request, rel: str) -> Response:
        try:
            path = files.safe_path(request.app.state.ctx.store.media_dir, rel)
        except files.Refused:
            raise HTTPException(404, "no such image") from None
        if path.suffix.lower() in files.BROWSER_CANNOT_SHOW:
            return Response(files.as_png(path), media_type="image/png", headers=cache)
        return FileResponse(path, media_type=files.IMAGE_TYPES[path.suffix.lower()], headers=cache)

    @app.get("/thumbs/{item_id}.jpg", tags=["images"], summary="Overlay thumbnail of an item")
    def thumb(request: Request, item_id: ItemId) -> Response:
        item, path = _item_file(request, item_id, "overlay_path")
        return Response(_render(files.thumbnail, path, item), media_type="image/jpeg", headers=cache)

    @app.get("/heatmaps/{item_id}.png", tags=["images"], summary="Heat map of an item (when the map was saved)")
    def heatmap(request: Request, item_id: ItemId) -> Response:
        item, path = _item_file(request, item_id, "map_path", {".npy"})
        return Response(_render(files.heatmap_png, path, item), media_type="image/png", headers=cache)


def _render(fn: Callable[[Path, int, int], bytes], path: Path, item) -> bytes:
    try:
        return fn(path, item.width, item.height)
    except files.Refused:  # unreadable file: same answer as a missing one
        raise HTTPException(404, "no such image") from None


def _item_file(request: Request, item_id: int, column: str, suffixes: set[str] | None = None):
    ctx: Ctx = request.app.state.ctx
    item = get_item(ctx.store.engine, item_id)
    rel = getattr(item, column) if item is not None else None
    try:
        if rel is None:
            raise files.Refused(column)
        return item, files.safe_path(ctx.store.media_dir, rel, suffixes)
    except files.Refused:
        raise HTTPException(404, "no such image") from None
