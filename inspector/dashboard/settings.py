"""Where the dashboard finds its store, review token and retrain folder.

The line config (`line1.yaml`) is shared with the watcher; the dashboard reads only its `store` and
`dashboard` sections, so a dashboard started next to a watcher sees the same store. The token is a secret:
it comes from the config or an environment variable and is never written to pages or logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
import yaml
from pydantic import ValidationError

from inspector.errors import InspectorError
from inspector.io.store import Store
from inspector.config.line import DashboardConfig, StoreConfig

MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class DashboardSettings:
    store_url: str
    media_dir: Path | None
    token: str | None
    retrain_dir: Path | None  # None: decided once the store is open (beside it)


def resolve(store: str | None, config: Path | None) -> DashboardSettings:
    """Merge `--store` and `--config`: the command line wins; one InspectorError line on any mistake."""
    store_cfg, dash = _read(config) if config is not None else (StoreConfig(), DashboardConfig())
    url = store or (store_cfg.url if config is not None else None)
    if not url:
        raise InspectorError("no store: pass --store sqlite:///line1/store.db or --config line1.yaml")
    token = dash.token.get_secret_value() if dash.token else os.environ.get(dash.token_env) or None
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        where = "dashboard.token" if dash.token else dash.token_env
        raise InspectorError(f"{where}: the review token needs at least {MIN_TOKEN_CHARS} characters "
                             "(e.g. python -c 'import secrets; print(secrets.token_urlsafe())')")
    media = store_cfg.media_dir if (config is not None and (store is None or store == store_cfg.url)) else None
    return DashboardSettings(url, media, token, dash.retrain_dir)


def open_store(s: DashboardSettings) -> Store:
    """Open an existing store; a mistyped SQLite path is an error, not a new empty store."""
    if s.store_url.startswith("sqlite:///") and not s.store_url.endswith(":memory:"):
        db = Path(sa.engine.make_url(s.store_url).database or "")
        if not db.is_file():
            raise InspectorError(f"store {s.store_url}: no such file (check the path, or start the watcher first)")
    return Store.open(s.store_url, s.media_dir)


def default_retrain_dir(store: Store, url: str) -> Path:
    """retrain/good/ beside the SQLite file, else beside the media folder."""
    if url.startswith("sqlite:///"):
        db = sa.engine.make_url(url).database
        if db and db != ":memory:":
            return Path(db).resolve().parent / "retrain" / "good"
    return store.media_dir.resolve().parent / "retrain" / "good"


def _read(path: Path) -> tuple[StoreConfig, DashboardConfig]:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise InspectorError(f"{path}: cannot read config ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise InspectorError(f"{path}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise InspectorError(f"{path}: expected a mapping of settings at the top level")
    parts = []
    for key, model in (("store", StoreConfig), ("dashboard", DashboardConfig)):
        try:
            parts.append(model(**(raw.get(key) or {})))
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join([key, *(str(p) for p in err["loc"])])
            what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            raise InspectorError(f"{path}: {where}: {what}") from None
    return _relative_to(parts[0], parts[1], Path(path).resolve().parent)


def _relative_to(store: StoreConfig, dash: DashboardConfig, base: Path) -> tuple[StoreConfig, DashboardConfig]:
    """Relative paths in the config are relative to the config file (as for the watcher)."""

    def p(x: Path | None) -> Path | None:
        return None if x is None else (x if x.is_absolute() else base / x)

    url = store.url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and not url.endswith(":memory:"):
        url = "sqlite:///" + str(base / url[len("sqlite:///"):])
    return (store.model_copy(update={"url": url, "media_dir": p(store.media_dir)}),
            dash.model_copy(update={"retrain_dir": p(dash.retrain_dir)}))
