"""The spool: camera frames held through a store outage survive a kill and are committed once, in order, with their
alerts (issue 19, item 2). Unit tests of the files, the writer across a restart, and a real watcher killed -9."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import urllib.request
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

import inspector.watcher.writer as writer_mod
from inspector.io.schema import Flagged, Outbox, Processed, ScoreSample
from inspector.io.spool import Spool, SpooledFrame, SpoolFull
from inspector.io.store import ScoredFrame, Store
from inspector.watcher.ops import Metrics
from inspector.watcher.writer import Writer
from tests.support import (
    MqttCollector,
    free_port,
    line_config,
    part_image,
    spawn_watcher,
    temp_database,
    wait_for,
    write_config,
    write_double,
    write_video,
)
from tests.watcher.test_writer import T0, CuttableProxy, FlakyStore, camera_job, rows

DOWN = OperationalError("INSERT", {}, ConnectionRefusedError("connection refused"))


def _frame(i: int) -> SpooledFrame:
    return SpooledFrame(
        ScoredFrame("cam", f"k{i}", T0 + timedelta(seconds=i), 0.3, 0.6, 2.0, False), None, False, "rtsp://cam", "v1"
    )


def test_spool_files_keep_order_and_bound_and_survive_reopening(tmp_path):
    sp = Spool(tmp_path / "sp", max_frames=3)
    written = [sp.write(_frame(i)) for i in range(3)]
    with pytest.raises(SpoolFull):
        sp.write(_frame(3))
    (tmp_path / "sp" / f".000000000003{'.frame.json'}.tmp").write_bytes(b'{"half')  # a kill while writing one
    again = Spool(tmp_path / "sp", max_frames=3)
    assert [again.read(p).frame.frame_key for p in again.existing()] == ["k0", "k1", "k2"]
    assert again.read(again.existing()[0]) == written[0]
    assert not list((tmp_path / "sp").glob(".*.tmp"))
    again.remove(again.existing()[0])
    assert again.write(_frame(4)).frame.path.endswith("000000000003.frame.json")  # numbering goes on, in order


def _writer(store, spool_dir, monkeypatch):
    monkeypatch.setattr(writer_mod, "RETRY_HELD_S", 0.05)
    flaky = FlakyStore(store)
    w = Writer(
        flaky,
        "l1",
        ["mq"],
        False,
        Metrics(),
        lambda: None,
        lambda e: None,
        depth=4,
        max_batch=3,
        spool=Spool(spool_dir, 1000),
    )
    w.start()
    return w, flaky


def test_frames_held_in_the_spool_are_committed_by_the_next_writer_in_order(store, tmp_path, monkeypatch, caplog):
    w, flaky = _writer(store, tmp_path / "spool", monkeypatch)
    flaky.fail = DOWN
    for i in range(20):
        w.submit(camera_job(i, flagged=i in (5, 12)))
    wait_for(lambda: w.held() == 20, 10, what="20 frames held")
    assert len(list((tmp_path / "spool").glob("*.frame.json"))) == 20  # on disk, not only in memory
    with caplog.at_level(logging.INFO, logger="inspector.watch"):
        w.stop(10)  # the store is still down: they wait in the spool
    assert "wait in the spool" in caplog.text and "were not recorded" not in caplog.text
    assert rows(store, ScoreSample, ScoreSample.id) == []

    w2, _ = _writer(store, tmp_path / "spool", monkeypatch)  # the next start, the store answering
    try:
        wait_for(lambda: store.counters().get("cam", {}).get("scored") == 20 and w2.held() == 0, 10, what="the backlog")
    finally:
        w2.stop(10)
    assert [r.created_at for r in rows(store, ScoreSample, ScoreSample.id)] == [
        T0 + timedelta(seconds=i) for i in range(20)
    ]
    assert [r.frame_key for r in rows(store, Flagged, Flagged.id)] == ["cam-005", "cam-012"]
    assert [r.sink for r in rows(store, Outbox, Outbox.id)] == ["mq", "mq"]
    assert len(rows(store, Processed, Processed.id)) == 20  # the spool files are their ledger entries
    assert not list((tmp_path / "spool").glob("*.frame.json"))


def test_a_kill_between_commit_and_removal_commits_nothing_twice(store, tmp_path, monkeypatch):
    sp = Spool(tmp_path / "spool", 1000)
    frames = [sp.write(_frame(i)) for i in range(7)]
    store.record_frames([(sf.frame, None) for sf in frames[:4]])  # committed, then killed before the removal
    w, _ = _writer(store, tmp_path / "spool", monkeypatch)
    try:
        wait_for(lambda: w.held() == 0, 10, what="the spool drained")
    finally:
        w.stop(10)
    assert store.counters()["cam"]["scored"] == 7
    assert [r.frame_key for r in rows(store, Processed, Processed.id)] == [f"k{i}" for i in range(7)]
    assert not list((tmp_path / "spool").glob("*.frame.json"))


def test_a_full_spool_says_so_once_and_keeps_the_oldest(store, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(writer_mod, "RETRY_HELD_S", 0.05)
    flaky = FlakyStore(store)
    flaky.fail = DOWN
    w = Writer(
        flaky,
        "l1",
        [],
        False,
        Metrics(),
        lambda: None,
        lambda e: None,
        depth=4,
        max_batch=3,
        spool=Spool(tmp_path / "spool", 100),
    )
    w.start()
    with caplog.at_level(logging.ERROR, logger="inspector.watch"):
        for i in range(130):
            w.submit(camera_job(i))
        wait_for(lambda: w.held() == 100 and w.depth() == 0, 10, what="the spool full")
        flaky.fail = None
        wait_for(lambda: store.counters().get("cam", {}).get("scored") == 100, 10, what="the spooled frames")
        w.stop(10)
    assert caplog.text.count("is full (100 frames, store.spool_max_frames)") == 1
    keys = [r.created_at for r in rows(store, ScoreSample, ScoreSample.id)]
    assert keys == [T0 + timedelta(seconds=i) for i in range(100)]  # the oldest kept, in order


def _health(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # 503 while the store is down
        return json.loads(e.read())
    except OSError:
        return {}


def test_kill_9_during_a_store_outage_loses_no_held_frame_and_no_alert(tmp_path):
    """A real watcher on PostgreSQL through a cuttable proxy: the connection is cut, a camera's 120 frames (one defect)
    are scored and spooled, the watcher is killed -9; the next start, with the database back, records every one of
    them once, in order, and delivers the defect's alert."""
    frames = [part_image(i, 60 <= i < 72, size=48) for i in range(120)]
    video = tmp_path / "line.avi"
    port = free_port()
    with contextlib.closing(CuttableProxy()) as proxy, temp_database() as direct_url:
        doc = line_config(
            tmp_path,
            write_double(tmp_path / "model"),
            [
                {
                    "kind": "camera",
                    "name": "cam",
                    "uri": str(video),
                    "realtime": False,
                    "reconnect_min_s": 0.1,
                    "reconnect_max_s": 0.2,
                }
            ],
            [{"kind": "mqtt", "name": "mq"}],
            ops={"port": port},
        )
        doc["store"] = {"url": direct_url.replace(":5432/", f":{proxy.port}/"), "media_dir": str(tmp_path / "media")}
        config = write_config(tmp_path / "line.yaml", doc)
        col = MqttCollector(f"inspector/{doc['line']}/+/alert")
        log_path = tmp_path / "watch.log"
        proc = spawn_watcher(config, log_path)
        try:
            wait_for(lambda: _health(port).get("store_ok"), 60, what="the watcher up")
            proxy.cut()  # the database goes away ...
            os.replace(write_video(tmp_path / "part.avi", frames), video)  # ... and the camera starts delivering
            wait_for(lambda: _health(port).get("camera_frames_held") == 120, 60, what="120 frames held")
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            spooled = sorted((tmp_path / "spool" / doc["line"]).glob("*.frame.json"))
            assert len(spooled) == 120
            video.unlink()  # the camera is gone after the restart: only the held frames are recorded
            proxy.up = True
            proc = spawn_watcher(config, log_path)
            direct = Store.open(direct_url, tmp_path / "media")
            try:
                wait_for(lambda: direct.counters().get("cam", {}).get("scored") == 120, 60, what="the held frames")
                wait_for(lambda: len(col.messages) == 1, 30, what="the defect's alert")
                wait_for(lambda: direct.pending_count() == {}, 30, what="the outbox drained")
                with direct.engine.connect() as c:
                    times = list(c.scalars(sa.select(ScoreSample.created_at).order_by(ScoreSample.id)))
                    ledger = list(c.scalars(sa.select(Processed.path).order_by(Processed.id)))
                    flagged_rows = c.execute(sa.select(Flagged.frame_key, Flagged.image_path)).all()
                counters = direct.counters()["cam"]
            finally:
                direct.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(30)
            col.close()
    assert rc == 0
    assert counters["scored"] == 120 and counters["flagged"] == 1
    assert times == sorted(times) and len(set(times)) == 120  # each once, in scoring order
    assert ledger == [str(p) for p in spooled]
    assert len(flagged_rows) == 1 and (tmp_path / "media" / flagged_rows[0][1]).stat().st_size > 0
    assert col.messages[0][1]["idempotency_key"] == flagged_rows[0][0]
    assert not list((tmp_path / "spool" / doc["line"]).glob("*.frame.json"))
    log = log_path.read_text()
    assert "120 camera frames from an earlier run wait in the spool" in log and "Traceback" not in log
