"""The latent map's binary payload, built from numpy columns and cached per model version.

Building it row by row in Python took 2.5-6 s at 100k points (benchmarks/latent.py). Here a version's points
(the newest `MAP_MAX_POINTS` embeddings: id, x, y, flagged id) are read once into numpy columns and topped
up with the rows added since; each request reads only the flagged items' review statuses (a primary-key
range), joins them and the groups by `searchsorted`, and writes the columns with one `tobytes` each. The
bytes are kept until a new row, a review or a regrouping changes them.

Layout (little-endian): uint32 header length, JSON header (padded to 4 bytes), then n = reference + good +
flagged points in that order: x float32[n], y float32[n], item id int32[m], group int32[m] (the last m points
are the flagged items), kind uint8[n] (`STATUS_CODE`). 9 bytes a point, 8 more for a flagged one.
"""

from __future__ import annotations

import itertools
import json
import struct
from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa

from inspector.io.schema import Embedding, Flagged

STATUS_CODE = {"reference": 0, "good": 1, "pending": 2, "confirmed": 3, "false_alarm": 4}
MAP_MAX_POINTS = 200_000
LAYOUT = ["x:f32[n]", "y:f32[n]", "id:i32[m]", "group:i32[m]", "kind:u8[n]"]


@dataclass
class MapPoints:
    """A version's newest map points as numpy columns, topped up from the store, and the last payload built."""

    last_id: int = 0
    eid: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # embedding row id (ascending)
    xy: np.ndarray = field(default_factory=lambda: np.empty((0, 2), np.float32))
    fid: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # flagged id, -1 for a good frame
    key: tuple = ()
    payload: bytes = b""

    def top_up(self, c: sa.Connection, version: str) -> None:
        """Read the rows added since the last call (at most the newest MAP_MAX_POINTS) into the columns."""
        rows = c.execute(
            sa.select(Embedding.id, Embedding.x, Embedding.y, sa.func.coalesce(Embedding.flagged_id, -1))
            .where(Embedding.model_version == version, Embedding.id > self.last_id)
            .order_by(Embedding.id.desc())
            .limit(MAP_MAX_POINTS)
        ).all()
        if not rows:
            return
        flat = np.fromiter(itertools.chain.from_iterable(rows), np.float64, 4 * len(rows)).reshape(-1, 4)[::-1]
        self.eid = np.concatenate([self.eid, flat[:, 0].astype(np.int64)])[-MAP_MAX_POINTS:]
        self.xy = np.concatenate([self.xy, flat[:, 1:3].astype(np.float32)])[-MAP_MAX_POINTS:]
        self.fid = np.concatenate([self.fid, flat[:, 3].astype(np.int64)])[-MAP_MAX_POINTS:]
        self.last_id = int(self.eid[-1])

    def statuses(self, c: sa.Connection, recent: int) -> tuple[np.ndarray, np.ndarray]:
        """(flagged ids ascending, their STATUS_CODE) for the flagged items among the newest `recent` points.

        One range scan of the flagged table's primary key between the window's smallest and largest item id (a
        join through the embeddings would walk every stored point of the version); items of other versions in
        that range are read too and simply never looked up."""
        fid = self.fid[-recent:]
        fid = fid[fid >= 0]
        if len(fid) == 0:
            return np.empty(0, np.int64), np.empty(0, np.uint8)
        rows = c.execute(
            sa.select(Flagged.id, Flagged.review_status)
            .where(Flagged.id >= int(fid.min()), Flagged.id <= int(fid.max()))
            .order_by(Flagged.id)
        ).all()
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        return ids, np.fromiter((STATUS_CODE.get(r[1], 2) for r in rows), np.uint8, len(rows))


def group_columns(groups: list) -> tuple[np.ndarray, np.ndarray]:
    """(member ids ascending, their group id) of `Group`s."""
    if not groups:
        return np.empty(0, np.int64), np.empty(0, np.int32)
    ids = np.concatenate([np.asarray(g.members, np.int64) for g in groups])
    gid = np.concatenate([np.full(len(g.members), g.id, np.int32) for g in groups])
    order = np.argsort(ids, kind="stable")
    return ids[order], gid[order]


def lookup(keys: np.ndarray, values: np.ndarray, want: np.ndarray, missing: int) -> np.ndarray:
    """values[keys == w] for each w in `want` (keys ascending), `missing` where absent."""
    out = np.full(len(want), missing, values.dtype)
    if len(keys) == 0 or len(want) == 0:
        return out
    at = np.clip(np.searchsorted(keys, want), 0, len(keys) - 1)
    hit = keys[at] == want
    out[hit] = values[at[hit]]
    return out


def build_payload(
    version: str,
    cloud: np.ndarray,
    xy: np.ndarray,
    fid: np.ndarray,
    status: tuple[np.ndarray, np.ndarray],
    groups: tuple[np.ndarray, np.ndarray],
) -> bytes:
    """The payload of the reference cloud (R, 2) and the stored points (xy (N, 2), flagged id or -1)."""
    flagged = fid >= 0
    good_xy, flag_xy, flag_id = xy[~flagged], xy[flagged], fid[flagged]
    pts = np.concatenate([np.asarray(cloud, np.float32).reshape(-1, 2), good_xy, flag_xy])  # (n, 2)
    kind = np.concatenate(
        [
            np.full(len(cloud), STATUS_CODE["reference"], np.uint8),
            np.full(len(good_xy), STATUS_CODE["good"], np.uint8),
            lookup(*status, flag_id, STATUS_CODE["pending"]),
        ]
    )
    head = {
        "version": version,
        "n": len(pts),
        "m": len(flag_id),
        "reference": len(cloud),
        "good": len(good_xy),
        "kinds": STATUS_CODE,
        "layout": LAYOUT,
    }
    header = json.dumps(head).encode()
    header += b" " * ((-(4 + len(header))) % 4)
    cols = [
        np.ascontiguousarray(pts[:, 0]),
        np.ascontiguousarray(pts[:, 1]),
        flag_id.astype(np.int32),
        lookup(*groups, flag_id, -1).astype(np.int32),
        kind,
    ]
    return b"".join([struct.pack("<I", len(header)), header, *(c.tobytes() for c in cols)])
