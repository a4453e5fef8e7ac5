"""The watcher's store: flagged items, per-source counters, score samples, file ledger, alert outbox.

SQLite by default (one file, nothing to start), PostgreSQL by URL. Opening a store migrates it to the
current schema with alembic, so a newer watcher opens an older store. Each scored frame is one
transaction: ledger row, counters, score sample and, when flagged, the flagged row and its pending
alerts. A crash therefore leaves a frame either fully recorded or not at all (exactly-once with the
ledger), and an alert is never recorded without its item or lost after it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

for _name in ("alembic.runtime.plugins", "alembic.runtime.migration"):  # one line of ours instead of their chatter
    logging.getLogger(_name).setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from inspector.errors import InspectorError  # noqa: E402
from inspector.io.schema import Embedding, Flagged, LatentSpaceRow, Outbox, Processed, ScoreSample, SourceCounters  # noqa: E402

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("inspector.store")


class StoreUnavailable(InspectorError):
    """The store did not answer (refused, unreachable, starting up): an outage that passes, not a mistake to fix."""


# a PostgreSQL server that answers with one of these is down for a moment; any other FATAL (no such role or
# database, wrong password) is a configuration mistake, reported at once
_PASSING_FATAL = ("starting up", "shutting down", "in recovery", "too many", "not yet accepting")


def is_outage(e: BaseException, url: str) -> bool:
    """A server store that cannot be reached now (SQLite is a file: its errors are never waited for)."""
    if url.startswith("sqlite") or not isinstance(e, OperationalError):
        return False
    msg = str(e)
    return "FATAL:" not in msg or any(p in msg for p in _PASSING_FATAL)


class DuplicateFrame(Exception):
    """The frame key is already in the ledger: the input was recorded before (e.g. before a crash)."""


@dataclass(frozen=True)
class ScoredFrame:
    source: str
    frame_key: str
    created_at: datetime  # UTC-aware
    score: float  # normalized, 1.0 = threshold
    raw_score: float
    threshold: float  # raw, as applied
    is_anomaly: bool
    path: str | None = None  # input file: recorded in the ledger (exactly-once); None for camera frames
    latent: LatentPoint | None = None  # its embedding, to keep (every flagged frame, a sample of good ones)


@dataclass(frozen=True)
class LatentPoint:
    """A frame's embedding in one model version's latent space, with its map coordinates."""

    model_version: str
    vector: bytes  # float32, unit length
    x: float
    y: float


@dataclass(frozen=True)
class FlagRecord:
    model_version: str
    image_path: str | None  # relative to the media folder; None when the images could not be saved (camera frames)
    overlay_path: str | None
    map_path: str | None
    width: int
    height: int
    origin: str | None = None
    alerts: dict[str, dict] = field(default_factory=dict)  # sink name -> JSON payload


@dataclass(frozen=True)
class PendingAlert:
    id: int
    flagged_id: int
    source: str
    sink: str
    payload: str  # JSON text, sent as is
    idempotency_key: str
    attempts: int
    next_attempt_at: datetime


_T = {
    t.name: t
    for t in (Flagged.__table__, Processed.__table__, ScoreSample.__table__, Outbox.__table__, Embedding.__table__)
}
_INSERT = {name: sa.insert(t) for name, t in _T.items()}
_C = SourceCounters.__table__.c
_COUNT = (
    sa.update(SourceCounters.__table__)
    .where(_C.source == sa.bindparam("src"))
    .values(
        scored=_C.scored + sa.bindparam("d_scored"),
        flagged=_C.flagged + sa.bindparam("d_flagged"),
        dropped=_C.dropped + sa.bindparam("d_dropped"),
        errors=_C.errors + sa.bindparam("d_errors"),
        last_seen=sa.bindparam("seen"),
        last_score=sa.func.coalesce(sa.bindparam("score", type_=sa.Float), _C.last_score),
    )
)


def _count(c: sa.Connection, source: str, when: datetime, last_score: float | None = None, **inc: int) -> None:
    """Add to a source's counters, creating its row on first use. Two transactions may create it at once
    (backfill batches of one source on a Dask cluster): the one that finds the row made adds to it instead."""
    d = {k: inc.get(k, 0) for k in ("scored", "flagged", "dropped", "errors")}
    params = {"src": source, "seen": when, "score": last_score, **{f"d_{k}": v for k, v in d.items()}}
    if c.execute(_COUNT, params).rowcount == 0:
        new = _insert_new_source(c).values(source=source, last_score=last_score, last_seen=when, **d)
        if c.execute(new.returning(SourceCounters.__table__.c.source)).first() is None:
            c.execute(_COUNT, params)  # another transaction committed the row after our update


def _insert_new_source(c: sa.Connection) -> sa.Insert:
    """INSERT of a counters row that does nothing when the source's row exists (PostgreSQL waits for the other
    transaction to commit first), so a race for a new source neither fails nor counts twice."""
    table = SourceCounters.__table__
    if c.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=["source"])
    if c.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing(index_elements=["source"])
    return sa.insert(table)


def alembic_config(connection: sa.Connection) -> Config:
    """Alembic config bound to an open connection (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def _engine(url: str) -> sa.Engine:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]  # the driver the runtime extra installs
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:  # WAL: the dashboard reads while the watcher writes
        cur = dbapi_conn.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=30000"):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    return engine


class Store:
    """Small, documented API over the tables in `inspector.io.schema`."""

    def __init__(self, engine: sa.Engine, media_dir: Path) -> None:
        self.engine = engine
        self.media_dir = media_dir

    @classmethod
    def open(cls, url: str, media_dir: Path | None = None) -> Store:
        """Connect, create or migrate to the current schema, and make sure the media folder exists."""
        if media_dir is None:
            db = sa.engine.make_url(url).database if url.startswith("sqlite") else None
            if not db or db == ":memory:":
                raise InspectorError(
                    f"store {_safe(url)}: set store.media_dir (only SQLite files default to media/ beside them)"
                )
            media_dir = Path(db).parent / "media"
        if url.startswith("sqlite:///") and not url.endswith(":memory:"):
            Path(sa.engine.make_url(url).database).parent.mkdir(parents=True, exist_ok=True)
        engine: sa.Engine | None = None
        try:
            engine = _engine(url)
            with engine.begin() as conn:
                _migrate(conn, url)
        except (SQLAlchemyError, OSError, ImportError) as e:
            if engine is not None:
                engine.dispose()
            err = StoreUnavailable if is_outage(e, url) else InspectorError
            raise err(f"store {_safe(url)}: cannot open ({str(e).splitlines()[0]})") from None
        media_dir.mkdir(parents=True, exist_ok=True)
        return cls(engine, media_dir)

    def close(self) -> None:
        self.engine.dispose()

    # ---- frames -----------------------------------------------------------------------------
    def ledger_status(self, frame_key: str) -> tuple[str, str | None] | None:
        """(status, reason) when this input was recorded before, else None."""
        with self.engine.connect() as c:
            row = c.execute(
                sa.select(Processed.status, Processed.reason).where(Processed.frame_key == frame_key)
            ).first()
        return None if row is None else (row[0], row[1])

    def ledger_statuses(self, frame_keys: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """`ledger_status` of many keys in one query per 1,000 (a backfill batch): a round trip per key cost
        a backfill a third of its time. Keys never recorded are absent."""
        found: dict[str, tuple[str, str | None]] = {}
        with self.engine.connect() as c:
            for i in range(0, len(frame_keys), 1000):
                chunk = list(frame_keys[i : i + 1000])
                rows = c.execute(
                    sa.select(Processed.frame_key, Processed.status, Processed.reason).where(
                        Processed.frame_key.in_(chunk)
                    )
                )
                found.update({key: (status, reason) for key, status, reason in rows})
        return found

    def record_frame(self, frame: ScoredFrame, flag: FlagRecord | None = None) -> int | None:
        """One transaction: ledger, counters, score sample, flagged row + its outbox rows. Returns flagged id."""
        return self.record_frames([(frame, flag)])[0]

    def record_frames(self, items: Sequence[tuple[ScoredFrame, FlagRecord | None]]) -> list[int | None]:
        """Several frames in ONE transaction (all or none); flagged ids in order.

        Prepared Core statements rather than ORM objects, and one commit per batch: this runs next to the
        scorer. A frame whose key is already recorded raises DuplicateFrame and records nothing; a key the
        ledger holds as quarantined is not a duplicate: that file came back and is recorded as scored now.
        """
        try:
            with self.engine.begin() as c:
                return self._record(c, items)
        except IntegrityError as e:
            keys = [f.frame_key for f, _ in items if f.path]
            back = self._quarantined(keys)
            if not back:
                if "frame_key" in str(e) or any(self.ledger_status(f.frame_key) for f, _ in items):
                    raise DuplicateFrame(", ".join(f.frame_key for f, _ in items)) from None
                raise
        with self.engine.begin() as c:  # only after a conflict: the common path pays nothing for it
            c.execute(sa.delete(Processed).where(Processed.frame_key.in_(back), Processed.status == "quarantined"))
            try:
                return self._record(c, items)
            except IntegrityError:
                raise DuplicateFrame(", ".join(f.frame_key for f, _ in items)) from None

    def _quarantined(self, keys: list[str]) -> list[str]:
        if not keys:
            return []
        with self.engine.connect() as c:
            return list(
                c.scalars(
                    sa.select(Processed.frame_key).where(
                        Processed.frame_key.in_(keys), Processed.status == "quarantined"
                    )
                )
            )

    def _record(self, c: sa.Connection, items: Sequence[tuple[ScoredFrame, FlagRecord | None]]) -> list[int | None]:
        ids = [self._add_flagged(c, f, fl) if fl is not None else None for f, fl in items]
        ledger = [
            dict(
                frame_key=f.frame_key,
                source=f.source,
                path=f.path,
                status="scored",
                reason=None,
                flagged_id=fid,
                created_at=f.created_at,
            )
            for (f, _), fid in zip(items, ids)
            if f.path
        ]
        if ledger:
            c.execute(_INSERT["processed"], ledger)
        c.execute(
            _INSERT["scores"],
            [dict(source=f.source, created_at=f.created_at, score=f.score, is_anomaly=f.is_anomaly) for f, _ in items],
        )
        points = [
            dict(
                model_version=f.latent.model_version,
                source=f.source,
                created_at=f.created_at,
                flagged_id=fid,
                vector=f.latent.vector,
                x=f.latent.x,
                y=f.latent.y,
            )
            for (f, _), fid in zip(items, ids)
            if f.latent is not None
        ]
        if points:
            c.execute(_INSERT["embeddings"], points)
        for source in dict.fromkeys(f.source for f, _ in items):
            mine = [(f, fl) for f, fl in items if f.source == source]
            last = mine[-1][0]
            _count(
                c,
                source,
                last.created_at,
                scored=len(mine),
                flagged=sum(fl is not None for _, fl in mine),
                last_score=last.score,
            )
        return ids

    @staticmethod
    def _add_flagged(c: sa.Connection, frame: ScoredFrame, flag: FlagRecord) -> int:
        res = c.execute(
            _INSERT["flagged"],
            dict(
                source=frame.source,
                created_at=frame.created_at,
                score=frame.score,
                raw_score=frame.raw_score,
                threshold=frame.threshold,
                model_version=flag.model_version,
                image_path=flag.image_path,
                overlay_path=flag.overlay_path,
                map_path=flag.map_path,
                width=flag.width,
                height=flag.height,
                origin=flag.origin,
                review_status="pending",
                reviewed_by=None,
                reviewed_at=None,
                review_note=None,
                frame_key=frame.frame_key,
            ),
        )
        flagged_id = int(res.inserted_primary_key[0])
        if flag.alerts:
            c.execute(
                _INSERT["outbox"],
                [
                    dict(
                        flagged_id=flagged_id,
                        source=frame.source,
                        sink=sink,
                        payload=json.dumps({**payload, "flagged_id": flagged_id}),
                        idempotency_key=frame.frame_key,
                        created_at=frame.created_at,
                        attempts=0,
                        next_attempt_at=frame.created_at,
                        delivered_at=None,
                        last_error=None,
                    )
                    for sink, payload in flag.alerts.items()
                ],
            )
        return flagged_id

    def record_error(
        self, source: str, when: datetime, frame_key: str | None = None, path: str | None = None, reason: str = ""
    ) -> None:
        """Count an unreadable input; with a key, put it in the ledger as quarantined. The same key found again
        (dropped back from quarantine) is read again; when unreadable once more it is not counted twice."""
        with self.engine.begin() as c:
            if frame_key is not None:
                if c.execute(sa.select(Processed.id).where(Processed.frame_key == frame_key)).first():
                    return
                c.execute(
                    _INSERT["processed"],
                    dict(
                        frame_key=frame_key,
                        source=source,
                        path=path or "",
                        status="quarantined",
                        reason=reason[:2000],
                        flagged_id=None,
                        created_at=when,
                    ),
                )
            _count(c, source, when, errors=1)

    def add_dropped(self, source: str, n: int, when: datetime) -> None:
        """Frames a camera skipped because scoring could not keep up."""
        if n > 0:
            with self.engine.begin() as c:
                _count(c, source, when, dropped=n)

    def counters(self) -> dict[str, dict]:
        """Per-source totals, e.g. {'cam1': {'scored': 10, 'flagged': 1, ...}}."""
        with Session(self.engine) as s:
            rows = s.scalars(sa.select(SourceCounters)).all()
            return {
                r.source: {
                    "scored": r.scored,
                    "flagged": r.flagged,
                    "dropped": r.dropped,
                    "errors": r.errors,
                    "last_score": r.last_score,
                    "last_seen": r.last_seen,
                }
                for r in rows
            }

    # ---- latent space ---------------------------------------------------------------------------
    def put_latent_space(self, model_version: str, space: dict, when: datetime) -> None:
        """Keep a version's map projection and good cloud (from its manifest); a version's row never changes."""
        with self.engine.begin() as c:
            if c.execute(
                sa.select(LatentSpaceRow.model_version).where(LatentSpaceRow.model_version == model_version)
            ).first():
                return
            try:
                with c.begin_nested():
                    c.execute(
                        sa.insert(LatentSpaceRow.__table__).values(
                            model_version=model_version, dim=int(space["dim"]), space=json.dumps(space), created_at=when
                        )
                    )
            except IntegrityError:  # another watcher of the line wrote it first: the same manifest
                pass

    # ---- outbox -----------------------------------------------------------------------------
    def pending_heads(self, sink: str, sources: Collection[str] | None = None) -> list[PendingAlert]:
        """The oldest undelivered alert of each source for a sink: delivering only heads keeps order per source.
        `sources`: only these (a watcher's own, where lines share a store and a sink name); None: all."""
        heads = (
            sa.select(sa.func.min(Outbox.id))
            .where(Outbox.sink == sink, Outbox.delivered_at.is_(None), _among(Outbox.source, sources))
            .group_by(Outbox.source)
        )
        with Session(self.engine) as s:
            rows = s.scalars(sa.select(Outbox).where(Outbox.id.in_(heads)).order_by(Outbox.id)).all()
            return [
                PendingAlert(
                    r.id, r.flagged_id, r.source, r.sink, r.payload, r.idempotency_key, r.attempts, r.next_attempt_at
                )
                for r in rows
            ]

    def mark_delivered(self, alert_id: int, when: datetime) -> None:
        with Session(self.engine) as s, s.begin():
            s.execute(
                sa.update(Outbox)
                .where(Outbox.id == alert_id)
                .values(delivered_at=when, attempts=Outbox.attempts + 1, last_error=None)
            )

    def mark_failed(self, alert_id: int, error: str, next_attempt_at: datetime) -> None:
        """Record a failed attempt; the alert stays pending and is retried after `next_attempt_at`."""
        with Session(self.engine) as s, s.begin():
            s.execute(
                sa.update(Outbox)
                .where(Outbox.id == alert_id)
                .values(attempts=Outbox.attempts + 1, next_attempt_at=next_attempt_at, last_error=error[:2000])
            )

    def pending_count(self, sources: Collection[str] | None = None) -> dict[str, int]:
        """Undelivered alerts per sink (including sinks no longer configured); `sources` as in `pending_heads`."""
        return self._pending_per(Outbox.sink, sources)

    def pending_by_source(self) -> dict[str, int]:
        """Undelivered alerts per source, over all sinks (every line on the store)."""
        return self._pending_per(Outbox.source, None)

    def _pending_per(self, column, sources: Collection[str] | None) -> dict[str, int]:
        with Session(self.engine) as s:
            rows = s.execute(
                sa.select(column, sa.func.count())
                .where(Outbox.delivered_at.is_(None), _among(Outbox.source, sources))
                .group_by(column)
            ).all()
        return {key: n for key, n in rows}

    # ---- housekeeping -----------------------------------------------------------------------
    def prune(
        self,
        now: datetime,
        keep_scores_days: float,
        max_score_rows: int,
        keep_delivered_days: float = 30,
        sources: Collection[str] | None = None,
    ) -> None:
        """Bound the score samples and forget alerts delivered long ago (flagged rows are kept). `sources`: only
        these sources' rows, each watcher its own where lines with their own bounds share a store; None: all."""
        samples = _among(ScoreSample.source, sources)
        with Session(self.engine) as s, s.begin():
            s.execute(
                sa.delete(ScoreSample).where(samples, ScoreSample.created_at < now - timedelta(days=keep_scores_days))
            )
            cut = s.scalar(
                sa.select(ScoreSample.id).where(samples).order_by(ScoreSample.id.desc()).offset(max_score_rows).limit(1)
            )
            if cut is not None:
                s.execute(sa.delete(ScoreSample).where(samples, ScoreSample.id <= cut))
            s.execute(
                sa.delete(Outbox).where(
                    _among(Outbox.source, sources), Outbox.delivered_at < now - timedelta(days=keep_delivered_days)
                )
            )


def _among(source_column, sources: Collection[str] | None):
    """`source IN sources`; for None no condition (every source on the store)."""
    return sa.true() if sources is None else source_column.in_(list(sources))


MIGRATION_LOCK = 0x1E5C7042  # any constant shared by every inspector process


def _migrate(conn: sa.Connection, url: str) -> None:
    """Upgrade to the newest schema, logging only when something changed.

    On PostgreSQL a transaction-scoped advisory lock serializes watchers that open a new store at the
    same instant (otherwise both CREATE TABLE and one dies on a unique violation).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
    before = MigrationContext.configure(conn).get_current_revision()
    command.upgrade(alembic_config(conn), "head")
    after = MigrationContext.configure(conn).get_current_revision()
    if before != after:
        log.info("store %s: schema %s -> %s", _safe(url), before or "new", after)


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL is reported as given
        return url
