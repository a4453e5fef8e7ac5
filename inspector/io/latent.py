"""Reads of the store's latent tables shared by the dashboard and the daily report (no torch)."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime

import numpy as np
import sqlalchemy as sa

from inspector.io.schema import Embedding, LatentSpaceRow
from inspector.scoring.latent import LatentSpace


def latest_version(engine: sa.Engine) -> str | None:
    """The model version of the newest stored embedding."""
    with engine.connect() as c:
        return c.scalar(sa.select(Embedding.model_version).order_by(Embedding.id.desc()).limit(1))


def read_space(engine: sa.Engine, version: str) -> LatentSpace | None:
    with engine.connect() as c:
        text = c.scalar(sa.select(LatentSpaceRow.space).where(LatentSpaceRow.model_version == version))
    return LatentSpace.from_dict(json.loads(text)) if text else None


def window_drift(engine: sa.Engine, since: datetime, version: str | None = None) -> dict[str, dict]:
    """Per source: latent drift of all good-frame embeddings since `since` (newest version unless given), with n.
    The daily report's number; {} when the store holds no embeddings."""
    version = version or latest_version(engine)
    space = read_space(engine, version) if version else None
    if space is None:
        return {}
    with engine.connect() as c:
        rows = c.execute(
            sa.select(Embedding.source, Embedding.vector)
            .where(Embedding.model_version == version, Embedding.flagged_id.is_(None), Embedding.created_at >= since)
            .limit(500_000)
        ).all()
    per: dict[str, list[np.ndarray]] = defaultdict(list)
    for src, blob in rows:
        per[src].append(np.frombuffer(blob, np.float32))
    return {
        src: {"version": version, "n": len(v), "shift": space.drift(np.stack(v)), "noise_floor": 1 / np.sqrt(len(v))}
        for src, v in per.items()
    }
