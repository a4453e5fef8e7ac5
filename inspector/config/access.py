"""Where a process finds a line's store, review token and retrain folder: the dashboard, the report flow and
the deployment server read them the same way.

The line config (`line1.yaml`) is shared with the watcher; only its `store` and `dashboard` sections are
read here, so a dashboard started next to a watcher sees the same store. The token is a secret: it comes
from the config or an environment variable and is never written to pages or logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from inspector.config.line import DashboardConfig, StoreConfig, load_sections
from inspector.errors import InspectorError

MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class DashboardSettings:
    store_url: str
    media_dir: Path | None
    token: str | None
    retrain_dir: Path | None  # None: decided once the store is open (beside it)


def resolve(store: str | None, config: Path | None) -> DashboardSettings:
    """Merge `--store` and `--config`: the command line wins; one InspectorError line on any mistake."""
    store_cfg, dash = load_sections(config) if config is not None else (StoreConfig(), DashboardConfig())
    url = store or (store_cfg.url if config is not None else None)
    if not url:
        raise InspectorError("no store: pass --store sqlite:///line1/store.db or --config line1.yaml")
    token = dash.token.get_secret_value() if dash.token else os.environ.get(dash.token_env) or None
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        where = "dashboard.token" if dash.token else dash.token_env
        raise InspectorError(
            f"{where}: the review token needs at least {MIN_TOKEN_CHARS} characters "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe())')"
        )
    media = store_cfg.media_dir if (config is not None and (store is None or store == store_cfg.url)) else None
    return DashboardSettings(url, media, token, dash.retrain_dir)


def default_retrain_dir(url: str, media_dir: Path | None) -> Path | None:
    """retrain/good/ beside the SQLite file, else beside the media folder (None: neither is known)."""
    if url.startswith("sqlite:///") and not url.endswith(":memory:"):
        return Path(url.removeprefix("sqlite:///")).resolve().parent / "retrain" / "good"
    return None if media_dir is None else Path(media_dir).resolve().parent / "retrain" / "good"
