"""Opening the dashboard's store (its settings: `inspector.config.access`)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from inspector.config.access import DashboardSettings
from inspector.config.access import default_retrain_dir as retrain_dir_for
from inspector.errors import InspectorError
from inspector.io.store import Store


def open_store(s: DashboardSettings) -> Store:
    """Open an existing store; a mistyped SQLite path is an error, not a new empty store."""
    if s.store_url.startswith("sqlite:///") and not s.store_url.endswith(":memory:"):
        db = Path(sa.engine.make_url(s.store_url).database or "")
        if not db.is_file():
            raise InspectorError(f"store {s.store_url}: no such file (check the path, or start the watcher first)")
    return Store.open(s.store_url, s.media_dir)


def default_retrain_dir(store: Store, url: str) -> Path:
    """retrain/good/ beside the SQLite file, else beside the store's media folder."""
    return retrain_dir_for(url, store.media_dir)
