"""The dashboard's latent space: similar past items, defect kinds, the map's payload, latent drift.

Everything is per model version: an item is compared only with items its own version embedded (a new
version's space is another space). One `VectorIndex` per version holds the flagged items' embeddings and is
topped up from the store (rows with a higher id) on every query, so a new item is searchable at once.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo

import numpy as np
import sqlalchemy as sa

from inspector.dashboard import queries as q
from inspector.dashboard.latent_map import MAP_MAX_POINTS, MapPoints, build_payload, group_columns
from inspector.io.latent import latest_version, read_space
from inspector.io.schema import Embedding, Flagged, LatentSpaceRow
from inspector.scoring.kinds import MAX_CLUSTERED, cluster, exemplars, stable_ids
from inspector.scoring.latent import LatentSpace
from inspector.scoring.neighbours import VectorIndex, suggest


@dataclass
class Group:
    id: int
    count: int
    members: list[int]
    exemplars: list[int]
    confirmed: int
    false_alarm: int
    pending: int

    @property
    def reviewed_share(self) -> float:
        return (self.confirmed + self.false_alarm) / max(self.count, 1)


@dataclass
class _Version:
    index: VectorIndex | None = None
    last_id: int = 0
    groups: list[Group] = field(default_factory=list)
    groups_key: tuple = ()
    previous: dict[int, set[int]] = field(default_factory=dict)
    next_group: int = 1
    points: MapPoints = field(default_factory=MapPoints)


class Latent:
    """Per-app cache of the store's latent spaces."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._v: dict[str, _Version] = defaultdict(_Version)
        self._lock = threading.Lock()

    # ---- versions ---------------------------------------------------------------------------
    def versions(self) -> list[str]:
        with self.engine.connect() as c:
            return [
                r[0] for r in c.execute(sa.select(LatentSpaceRow.model_version).order_by(LatentSpaceRow.created_at))
            ]

    def latest_version(self) -> str | None:
        return latest_version(self.engine)

    def space(self, version: str) -> LatentSpace | None:
        return read_space(self.engine, version)

    def index(self, version: str) -> VectorIndex | None:
        """The version's flagged-item index, topped up with rows added since the last call."""
        with self._lock:
            v = self._v[version]
            with self.engine.connect() as c:
                rows = c.execute(
                    sa.select(Embedding.id, Embedding.flagged_id, Embedding.vector)
                    .where(
                        Embedding.model_version == version, Embedding.id > v.last_id, Embedding.flagged_id.is_not(None)
                    )
                    .order_by(Embedding.id)
                ).all()
            if rows:
                vecs = np.stack([np.frombuffer(r[2], np.float32) for r in rows])
                if v.index is None:
                    v.index = VectorIndex(vecs.shape[1], max(1024, 2 * len(rows)))
                if vecs.shape[1] == v.index.dim:
                    v.index.add(np.array([r[1] for r in rows]), vecs)
                v.last_id = rows[-1][0]
            return v.index

    # ---- similar items ----------------------------------------------------------------------
    def item_vector(self, item_id: int) -> tuple[str, np.ndarray] | None:
        with self.engine.connect() as c:
            row = c.execute(
                sa.select(Embedding.model_version, Embedding.vector).where(Embedding.flagged_id == item_id)
            ).first()
        return None if row is None else (row[0], np.frombuffer(row[1], np.float32))

    def similar(self, item_id: int, k: int = 8) -> dict:
        """The k nearest flagged items of the same version, and a suggested verdict with its support."""
        found = self.item_vector(item_id)
        if found is None:
            return {"embedded": False, "model_version": None, "neighbours": [], "suggestion": None}
        version, vec = found
        idx = self.index(version)
        ids, dist = idx.search(vec, k, exclude=item_id) if idx is not None else (np.empty(0), np.empty(0))
        items = {it.id: it for it in items_by_id(self.engine, [int(i) for i in ids])}
        neighbours = [{"item": items[int(i)], "distance": float(d)} for i, d in zip(ids, dist) if int(i) in items]
        verdict, votes, reviewed = suggest([n["item"].review_status for n in neighbours])
        suggestion = None
        if verdict is not None:
            label = "false alarm" if verdict == "false_alarm" else "confirmed defect"
            suggestion = {
                "verdict": verdict,
                "votes": votes,
                "reviewed": reviewed,
                "of": len(neighbours),
                "text": f"{votes} of the {reviewed} most similar reviewed items were {label}",
            }
        return {"embedded": True, "model_version": version, "neighbours": neighbours, "suggestion": suggestion}

    # ---- defect kinds -----------------------------------------------------------------------
    def groups(self, version: str) -> list[Group]:
        """Groups of the version's most recent flagged items; recomputed only when items or reviews changed."""
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(Embedding.flagged_id, Embedding.vector, Flagged.review_status)
                .join(Flagged, Flagged.id == Embedding.flagged_id)
                .where(Embedding.model_version == version)
                .order_by(Embedding.id.desc())
                .limit(MAX_CLUSTERED)
            ).all()
        key = tuple((r[0], r[2]) for r in rows)
        with self._lock:
            v = self._v[version]
            if key == v.groups_key:
                return v.groups
        if not rows:
            return []
        ids = np.array([r[0] for r in rows])
        vecs = np.stack([np.frombuffer(r[1], np.float32) for r in rows])
        labels = cluster(vecs)
        status = {r[0]: r[2] for r in rows}
        members = [set(ids[labels == g].tolist()) for g in range(labels.max() + 1)]
        with self._lock:
            gids, v.next_group = stable_ids(members, v.previous, v.next_group)
            out = []
            for g, gid in enumerate(gids):
                sel = np.flatnonzero(labels == g)
                st = [status[int(i)] for i in ids[sel]]
                out.append(
                    Group(
                        gid,
                        len(sel),
                        sorted(ids[sel].tolist(), reverse=True),
                        ids[sel[exemplars(vecs[sel])]].tolist(),
                        st.count("confirmed"),
                        st.count("false_alarm"),
                        st.count("pending"),
                    )
                )
            v.previous = {g.id: set(g.members) for g in out}
            v.groups, v.groups_key = out, key
        return out

    # ---- the map ----------------------------------------------------------------------------
    def map_payload(self, version: str, recent: int = 100_000) -> bytes:
        """The map's binary payload (`latent_map` has the layout) of the reference cloud and the newest `recent`
        stored points; rebuilt only when a row was added, a review changed or the groups moved."""
        recent = min(recent, MAP_MAX_POINTS)
        groups = group_columns(self.groups(version))
        with self._lock:
            pts = self._v[version].points
            with self.engine.connect() as c:
                pts.top_up(c, version)
                status = pts.statuses(c, recent)
            key = (pts.last_id, recent, *(a.tobytes() for a in (*status, *groups)))
            if key != pts.key:
                space = self.space(version)
                cloud = space.cloud if space is not None else np.zeros((0, 2), np.float32)
                pts.payload = build_payload(version, cloud, pts.xy[-recent:], pts.fid[-recent:], status, groups)
                pts.key = key
            return pts.payload

    # ---- drift ------------------------------------------------------------------------------
    def drift(self, version: str, tz: tzinfo, days: int = 30, now: datetime | None = None) -> dict[str, list[dict]]:
        """Per source and local day: mean shift of the good frames' embeddings from the version's good cloud,
        in units of the cloud's spread (`LatentSpace.drift`), with n and the noise floor 1/sqrt(n)."""
        space = self.space(version)
        if space is None:
            return {}
        since = (now or datetime.now(tz)) - timedelta(days=days)
        with self.engine.connect() as c:
            rows = c.execute(
                sa.select(Embedding.source, Embedding.created_at, Embedding.vector)
                .where(
                    Embedding.model_version == version, Embedding.flagged_id.is_(None), Embedding.created_at >= since
                )
                .order_by(Embedding.id)
                .limit(500_000)
            ).all()
        buckets: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
        for src, t, blob in rows:
            buckets[(src, t.astimezone(tz).strftime("%Y-%m-%d"))].append(np.frombuffer(blob, np.float32))
        out: dict[str, list[dict]] = defaultdict(list)
        for (src, day), vecs in sorted(buckets.items()):
            x = np.stack(vecs)
            out[src].append(
                {
                    "day": day,
                    "n": len(x),
                    "shift": round(space.drift(x), 4),
                    "noise_floor": round(1 / np.sqrt(len(x)), 4),
                }
            )
        return dict(out)


def items_by_id(engine: sa.Engine, ids: list[int]) -> list[q.Item]:
    if not ids:
        return []
    with engine.connect() as c:
        return q._items(c.execute(sa.select(*q._COLUMNS).where(Flagged.id.in_(ids))))
