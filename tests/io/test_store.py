"""Store on SQLite and on the real PostgreSQL (a throw-away database per run, dropped afterwards)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.orm import Session

from inspector.errors import InspectorError
from inspector.io.schema import Base, Flagged, Outbox, Processed, ScoreSample
from inspector.io.store import DuplicateFrame, FlagRecord, ScoredFrame, Store

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def frame(
    key: str, source: str = "cam", score: float = 0.5, path: str | None = "in/a.png", t: datetime = T0
) -> ScoredFrame:
    return ScoredFrame(source, key, t, score, score * 2, 2.0, score >= 1, path)


def flag(sinks=("mq",), source: str = "cam") -> FlagRecord:
    return FlagRecord(
        "v1",
        f"{source}/a.png",
        f"{source}/a.overlay.jpg",
        None,
        64,
        48,
        "a.png",
        {s: {"idempotency_key": "x", "source": source} for s in sinks},
    )


def test_schema_matches_migrations(store):
    with store.engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), Base.metadata)
        assert diff == []
        assert MigrationContext.configure(c).get_current_revision() == "0004"
    names = {ix["name"] for ix in sa.inspect(store.engine).get_indexes("flagged")}
    assert {"ix_flagged_source_created", "ix_flagged_review_created"} <= names


def test_media_dir_next_to_sqlite_file(tmp_path):
    s = Store.open(f"sqlite:///{tmp_path}/x/store.db")
    assert s.media_dir == tmp_path / "x" / "media" and s.media_dir.is_dir()
    s.close()


def test_postgres_needs_media_dir_and_bad_url_is_one_line(tmp_path):
    with pytest.raises(InspectorError, match="set store.media_dir"):
        Store.open("postgresql://postgres@127.0.0.1:5432/test")
    with pytest.raises(InspectorError, match=r"cannot open") as e:
        Store.open("postgresql://postgres:secret@127.0.0.1:1/none", tmp_path)
    assert "secret" not in str(e.value) and "\n" not in str(e.value)


def test_frame_flag_and_alerts_in_one_transaction(store):
    fid = store.record_frame(frame("k1", score=1.5), flag(("mq", "hook")))
    store.record_frame(frame("k2", score=0.2, path="in/b.png"))
    c = store.counters()["cam"]
    assert (c["scored"], c["flagged"], c["errors"], c["last_score"]) == (2, 1, 0, 0.2)
    assert c["last_seen"] == T0  # tz-aware UTC on both backends
    assert store.ledger_status("k1") == ("scored", None) and store.ledger_status("nope") is None
    heads = {a.sink: a for a in [*store.pending_heads("mq"), *store.pending_heads("hook")]}
    assert set(heads) == {"mq", "hook"} and json.loads(heads["mq"].payload)["flagged_id"] == fid
    with Session(store.engine) as s:
        row = s.get(Flagged, fid)
        assert row.review_status == "pending" and row.created_at == T0 and row.frame_key == "k1"
        assert s.scalar(sa.select(sa.func.count()).select_from(ScoreSample)) == 2


def test_duplicate_frame_records_nothing(store):
    store.record_frame(frame("k1", score=1.5), flag())
    with pytest.raises(DuplicateFrame):
        store.record_frame(frame("k1", score=1.5), flag())
    with pytest.raises(DuplicateFrame):  # camera frame (no ledger): the flagged row's key is unique too
        store.record_frame(frame("k1", path=None, score=1.5), flag())
    c = store.counters()["cam"]
    assert (c["scored"], c["flagged"]) == (1, 1)
    assert len(store.pending_heads("mq")) == 1 and store.pending_count() == {"mq": 1}


def test_outbox_heads_keep_order_per_source(store):
    for i in range(3):
        for src in ("a", "b"):
            store.record_frame(frame(f"{src}{i}", source=src, score=2.0, path=None), flag(source=src))
    heads = store.pending_heads("mq")
    assert [h.source for h in heads] == ["a", "b"] and [h.idempotency_key for h in heads] == ["a0", "b0"]
    store.mark_failed(heads[0].id, "broker down", T0 + timedelta(seconds=5))
    again = store.pending_heads("mq")[0]
    assert (again.id, again.attempts, again.next_attempt_at) == (heads[0].id, 1, T0 + timedelta(seconds=5))
    store.mark_delivered(heads[0].id, T0)
    assert [h.idempotency_key for h in store.pending_heads("mq")] == ["b0", "a1"]  # oldest first
    assert store.pending_count() == {"mq": 5}
    # Another line on the same store with a sink of the same name sees only its own sources' alerts.
    assert [h.idempotency_key for h in store.pending_heads("mq", ["a"])] == ["a1"]
    assert store.pending_heads("mq", ["other"]) == [] and store.pending_count(["other"]) == {}
    assert store.pending_count(["a"]) == {"mq": 2} and store.pending_count(("a", "b")) == {"mq": 5}
    assert store.pending_by_source() == {"a": 2, "b": 3}


def test_quarantine_is_in_the_ledger_once(store):
    store.record_error("f", T0, "kq", "in/bad.png", "truncated JPEG")
    store.record_error("f", T0, "kq", "in/bad.png", "truncated JPEG")  # replay after a crash
    store.record_error("cam", T0)  # a camera frame that failed: counted, no ledger
    assert store.ledger_status("kq") == ("quarantined", "truncated JPEG")
    assert store.counters()["f"]["errors"] == 1 and store.counters()["cam"]["errors"] == 1
    store.add_dropped("cam", 7, T0)
    assert store.counters()["cam"]["dropped"] == 7


def test_ledger_statuses_answer_many_keys_in_one_call(store):
    """A backfill batch asks once for all its keys (more than one query's chunk of 1,000 here)."""
    store.record_frames([(frame(f"k{i}", path=f"p{i}"), None) for i in range(1200)])
    store.record_error("f", T0, "kq", "in/bad.png", "truncated JPEG")
    got = store.ledger_statuses([f"k{i}" for i in range(0, 2400, 2)] + ["kq", "never"])
    assert set(got) == {f"k{i}" for i in range(0, 1200, 2)} | {"kq"}
    assert got["kq"] == ("quarantined", "truncated JPEG") and got["k0"] == store.ledger_status("k0")
    assert store.ledger_statuses([]) == {}


def test_two_transactions_creating_a_source_count_both(store):
    """Backfill batches of one new source commit at once on a Dask cluster: both used to insert its counters
    row and one batch failed with a duplicate key."""
    import threading

    from inspector.io.store import _count

    first = store.engine.connect()
    tx = first.begin()
    _count(first, "new", T0, 0.5, scored=3)  # the row exists in this open transaction only
    errors: list[Exception] = []

    def second() -> None:
        try:
            with store.engine.begin() as c:
                _count(c, "new", T0, 0.7, scored=2)  # waits for the first transaction's row (PostgreSQL, SQLite lock)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=second)
    t.start()
    t.join(0.5)
    tx.commit()
    first.close()
    t.join(30)
    assert not errors and store.counters()["new"]["scored"] == 5


def test_prune_bounds_scores_and_old_deliveries(store):
    for i in range(30):
        store.record_frame(frame(f"k{i}", path=f"p{i}", t=T0 - timedelta(days=40 if i < 5 else 0)))
    fid = store.record_frame(frame("kf", score=2.0, path="pf", t=T0 - timedelta(days=60)), flag())
    store.mark_delivered(store.pending_heads("mq")[0].id, T0 - timedelta(days=60))
    store.prune(T0, keep_scores_days=30, max_score_rows=20)
    with Session(store.engine) as s:
        kept = s.scalars(sa.select(ScoreSample.created_at)).all()
        assert len(kept) == 20 and min(kept) >= T0 - timedelta(days=30)
        assert s.get(Flagged, fid) is not None  # flagged items are never pruned
        assert s.scalar(sa.select(sa.func.count()).select_from(Processed)) == 31
    assert store.pending_count() == {}


def test_prune_of_one_line_leaves_other_lines_rows(store):
    """Lines sharing a store prune by their own bounds: another line's samples and deliveries are its own."""
    for i in range(10):
        for src in ("cam", "other"):
            store.record_frame(
                frame(f"{src}{i}", source=src, path=f"{src}/p{i}", t=T0 - timedelta(days=40 if i < 2 else 0))
            )
    for src in ("cam", "other"):
        store.record_frame(
            frame(f"{src}f", source=src, score=2.0, path=f"{src}/f", t=T0 - timedelta(days=60)), flag(source=src)
        )
        store.mark_delivered(store.pending_heads("mq", [src])[0].id, T0 - timedelta(days=60))
    store.prune(T0, keep_scores_days=30, max_score_rows=5, sources=["cam"])
    with Session(store.engine) as s:
        per = dict(s.execute(sa.select(ScoreSample.source, sa.func.count()).group_by(ScoreSample.source)).all())
        assert per == {"cam": 5, "other": 11}
        outbox = s.scalars(sa.select(Outbox.source)).all()
        assert outbox == ["other"]


def test_store_at_an_older_revision_opens_with_its_data(tmp_path):
    """A store created by an earlier version (here: the first revision) is upgraded, not recreated."""
    from alembic import command

    from inspector.io.store import _engine, alembic_config

    url = f"sqlite:///{tmp_path}/old.db"
    engine = _engine(url)
    with engine.begin() as c:
        command.upgrade(alembic_config(c), "0001")
        c.execute(sa.text("INSERT INTO frames (source, scored, flagged, dropped, errors) VALUES ('old', 41, 2, 0, 0)"))
    engine.dispose()
    s = Store.open(url)
    s.record_frame(frame("new", source="old", path=None))
    assert s.counters()["old"]["scored"] == 42
    s.close()
