"""The watch loop in-process, with real Mosquitto/PostgreSQL: folder and camera sources, rules, reload, ops."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from prometheus_client import generate_latest
from sqlalchemy.orm import Session

from inspector.config.line import WatchConfig
from inspector.io.schema import Flagged, Processed
from inspector.io.sinks import build_sink
from inspector.io.store import Store
from inspector.watcher import load_scorer
from inspector.watcher.loop import Watcher
from inspector.watcher.ops import OpsServer
from tests.support import (
    MqttCollector,
    drop,
    line_config,
    part_image,
    temp_database,
    wait_for,
    write_double,
    write_video,
)


@contextlib.contextmanager
def running(cfg: WatchConfig, scorer=None):
    """A Watcher on its own thread; stopped (and its store closed) on exit."""
    store = Store.open(cfg.store.url, cfg.store.media_dir)
    w = Watcher(cfg, scorer or load_scorer(cfg.model), store, {c.name: build_sink(c, cfg.line) for c in cfg.sinks})
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop,))
    t.start()
    try:
        yield w
    finally:
        stop.set()
        t.join(30)
        assert not t.is_alive()
        store.close()


def flagged(store: Store) -> list[Flagged]:
    with Session(store.engine) as s:
        return list(s.scalars(sa.select(Flagged).order_by(Flagged.id)))


def folder_cfg(tmp_path: Path, store_url: str | None = None, **extra) -> WatchConfig:
    doc = line_config(
        tmp_path,
        write_double(tmp_path / "model"),
        [{"kind": "folder", "name": "scan", "path": str(tmp_path / "in")}],
        [{"kind": "mqtt", "name": "mq"}],
        **extra,
    )
    if store_url:
        doc["store"] = {"url": store_url, "media_dir": str(tmp_path / "media")}
    return WatchConfig(**doc)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_folder_to_store_and_mqtt(tmp_path, backend, request):
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    cfg = folder_cfg(tmp_path, url)
    bright = {3, 7, 8}
    for i in range(12):
        drop(tmp_path / "in", f"p{i:02d}.png", part_image(i, i in bright))
    col = MqttCollector(f"inspector/{cfg.line}/+/alert")
    try:
        with running(cfg) as w:
            wait_for(lambda: w.store.counters().get("scan", {}).get("scored") == 12, 30, what="12 scored")
            wait_for(lambda: len(col.messages) == 3, 30, what="3 alerts")
            rows = flagged(w.store)
            assert [r.origin for r in rows] == ["p03.png", "p07.png", "p08.png"]
            for r in rows:
                assert (w.store.media_dir / r.image_path).read_bytes() == (
                    tmp_path / "in/processed" / r.origin
                ).read_bytes()
                assert (w.store.media_dir / r.overlay_path).stat().st_size > 0
                assert (
                    r.score > 1 and r.threshold == 1.0 and r.model_version == "v1" and (r.width, r.height) == (32, 32)
                )
            assert sorted(p["origin"] for _, p in col.messages) == ["p03.png", "p07.png", "p08.png"]
            assert {p["idempotency_key"] for _, p in col.messages} == {r.frame_key for r in rows}
            assert w.store.pending_count() == {}
        assert sorted(p.name for p in (tmp_path / "in/processed").iterdir()) == [f"p{i:02d}.png" for i in range(12)]
    finally:
        col.close()


def test_per_source_threshold_and_ledger_keep_mode(tmp_path):
    doc = line_config(
        tmp_path,
        write_double(tmp_path / "model"),
        [
            {"kind": "folder", "name": "strict", "path": str(tmp_path / "a"), "after": "keep"},
            {"kind": "folder", "name": "lenient", "path": str(tmp_path / "b"), "rules": {"threshold_scale": 2.0}},
        ],
    )
    for d in ("a", "b"):
        drop(tmp_path / d, "bright.png", part_image(1, True))
    cfg = WatchConfig(**doc)
    with running(cfg) as w:
        wait_for(
            lambda: all(w.store.counters().get(s, {}).get("scored") == 1 for s in ("strict", "lenient")),
            30,
            what="both scored",
        )
        rows = flagged(w.store)
        assert [(r.source, r.threshold) for r in rows] == [("strict", 1.0)]
    assert (tmp_path / "a/bright.png").exists()  # kept in place ...
    with running(cfg) as w:  # ... and not scored again after a restart (ledger)
        wait_for(lambda: tmp_path / "a/bright.png" in w.sources[0].src.folder._kept, 10, what="ledger lookup")
        drop(tmp_path / "a", "new.png", part_image(2, False))
        wait_for(lambda: w.store.counters()["strict"]["scored"] == 2, 10, what="the new file")
        assert len(flagged(w.store)) == 1


def test_camera_debounce_and_cooldown_make_one_alert(tmp_path):
    """A video file (written here with OpenCV) showing one defect for 12 frames: one flagged item, one alert."""
    frames = [part_image(i, 10 <= i < 22, size=48) for i in range(40)]
    video = write_video(tmp_path / "line.avi", frames)
    doc = line_config(
        tmp_path,
        write_double(tmp_path / "model"),
        [{"kind": "camera", "name": "cam", "uri": str(video), "realtime": False}],
        [{"kind": "mqtt", "name": "mq"}],
    )
    cfg = WatchConfig(**doc)
    col = MqttCollector(f"inspector/{cfg.line}/cam/alert")
    try:
        with running(cfg) as w:
            wait_for(lambda: w.store.counters().get("cam", {}).get("scored") == 40, 30, what="40 frames")
            wait_for(lambda: len(col.messages) == 1, 10, what="the alert")
            rows = flagged(w.store)
            assert len(rows) == 1 and rows[0].image_path.endswith(".jpg") and rows[0].origin == str(video)
            assert (w.store.media_dir / rows[0].image_path).stat().st_size > 0
            with Session(w.store.engine) as s:
                assert s.scalar(sa.select(sa.func.count()).select_from(Processed)) == 0  # no ledger for cameras
    finally:
        col.close()


def test_hot_reload_between_frames_and_ops_endpoints(tmp_path):
    cfg = folder_cfg(tmp_path)
    with running(cfg) as w:
        ops = OpsServer("127.0.0.1", 0, w.metrics, w.health)
        ops.start()
        try:
            drop(tmp_path / "in", "a.png", part_image(0, True))
            wait_for(lambda: len(flagged(w.store)) == 1, 20, what="first flag")
            write_double(tmp_path / "model", version="v2")  # `current` moved
            wait_for(lambda: w.scorer.version == "v2", 20, what="reload")
            drop(tmp_path / "in", "b.png", part_image(1, True))
            wait_for(lambda: len(flagged(w.store)) == 2, 20, what="second flag")
            assert [r.model_version for r in flagged(w.store)] == ["v1", "v2"]
            health = json.load(urllib.request.urlopen(f"http://127.0.0.1:{ops.port}/health"))
            assert health["ok"] and health["model_version"] == "v2" and health["sources"]["scan"]["kind"] == "folder"
            wait_for(lambda: w.store.pending_count() == {}, 20, what="alerts delivered")
            text = urllib.request.urlopen(f"http://127.0.0.1:{ops.port}/metrics").read().decode()
            for line in (
                'inspector_frames_scored_total{source="scan"} 2.0',
                'inspector_frames_flagged_total{source="scan"} 2.0',
                'inspector_model_info{version="v2"} 1.0',
                'inspector_alerts_total{result="delivered",sink="mq"} 2.0',
                'inspector_frame_seconds_count{source="scan"} 2.0',
            ):
                assert line in text
        finally:
            ops.stop()


def test_scorer_failure_quarantines_and_the_loop_goes_on(tmp_path):
    cfg = folder_cfg(tmp_path)
    drop(tmp_path / "in", "tiny.png", np.zeros((1, 1, 3), np.uint8))
    scorer = load_scorer(cfg.model)
    real = scorer.score
    scorer.score = lambda img, **kw: real(img, **kw) if img.shape[0] > 1 else 1 / 0
    with running(cfg, scorer) as w:
        wait_for(lambda: (tmp_path / "in/quarantine/tiny.png.reason.txt").exists(), 20, what="quarantine")
        drop(tmp_path / "in", "ok.png", part_image(0, False))
        wait_for(lambda: w.store.counters().get("scan", {}).get("scored") == 1, 20, what="next file")
        assert "scoring failed (ZeroDivisionError" in (tmp_path / "in/quarantine/tiny.png.reason.txt").read_text()
        assert w.store.counters()["scan"]["errors"] == 1


@pytest.fixture(scope="module")
def pg_url():
    with temp_database() as url:
        yield url


def test_crash_after_commit_before_move_finishes_without_rescoring(tmp_path):
    """The windows a kill -9 can hit: result committed but the file not yet moved (scored or quarantined)."""
    from datetime import datetime, timezone

    from inspector.io.sources import file_key
    from inspector.io.store import ScoredFrame

    cfg = folder_cfg(tmp_path)
    good = drop(tmp_path / "in", "done.png", part_image(0, True))
    bad = tmp_path / "in" / "bad.png"
    bad.write_text("junk")
    store = Store.open(cfg.store.url)
    now = datetime.now(timezone.utc)
    for p in (good, bad):
        st = p.stat()
        key = file_key("scan", p.name, st.st_size, st.st_mtime_ns)
        if p is good:
            store.record_frame(ScoredFrame("scan", key, now, 0.5, 0.5, 1.0, False, str(p)))
        else:
            store.record_error("scan", now, key, str(p), "not a PNG, JPEG, BMP or TIFF image")
    store.close()
    with running(cfg) as w:
        wait_for(lambda: (tmp_path / "in/processed/done.png").exists(), 20, what="move to processed")
        wait_for(lambda: (tmp_path / "in/quarantine/bad.png.reason.txt").exists(), 20, what="move to quarantine")
        assert w.store.counters()["scan"] == {**w.store.counters()["scan"], "scored": 1, "errors": 1, "flagged": 0}
        assert w.store.pending_count() == {}


def test_json_log_lines_carry_extra_fields():
    import logging

    from inspector.watcher.ops import JsonFormatter

    rec = logging.LogRecord(
        "inspector.watch", logging.WARNING, __file__, 1, "folder %s: quarantined %s", ("scan", "a.png"), None
    )
    rec.source = "scan"
    doc = json.loads(JsonFormatter().format(rec))
    assert doc["msg"] == "folder scan: quarantined a.png" and doc["level"] == "warning" and doc["source"] == "scan"
    assert doc["ts"].endswith("Z") and "args" not in doc


def test_low_disk_space_for_media_turns_health_red_once_and_back(tmp_path, monkeypatch, caplog):
    """Free space below store.min_free_mb: /health not ok, one error line; enough again: ok, one info line."""
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    free = {"mb": 5000}
    real = shutil.disk_usage
    monkeypatch.setattr(
        shutil,
        "disk_usage",
        lambda p: (
            usage(10**12, 0, free["mb"] * 2**20) if Path(p).resolve() == (tmp_path / "media").resolve() else real(p)
        ),
    )
    monkeypatch.setattr(Watcher, "DISK_CHECK_S", 0.1)
    cfg = folder_cfg(
        tmp_path, store={"url": f"sqlite:///{tmp_path}/s.db", "media_dir": str(tmp_path / "media"), "min_free_mb": 1000}
    )
    with caplog.at_level("INFO", logger="inspector.watch"), running(cfg) as w:
        wait_for(lambda: w.health()["media_free_mb"] == 5000, 10, what="first measurement")
        assert w.health()["ok"] and not w.health()["disk_low"]
        free["mb"] = 200
        wait_for(lambda: w.health()["disk_low"], 10, what="low disk noticed")
        assert not w.health()["ok"]
        time.sleep(0.5)  # measured several times more: still one error line
        free["mb"] = 3000
        wait_for(lambda: w.health()["ok"], 10, what="recovered")
        assert "inspector_media_free_bytes 3.145728e+09" in generate_latest(w.metrics.registry).decode()
    errors = [r for r in caplog.records if "only 200 MB free" in r.getMessage()]
    assert len(errors) == 1 and errors[0].levelname == "ERROR"
    assert "3000 MB free on the disk" in caplog.text


def test_full_media_disk_records_camera_frames_without_images_and_folder_files_wait(tmp_path, monkeypatch, caplog):
    """Saving images fails (disk full): a flagged camera frame, which exists nowhere else, is still recorded and
    alerted, without images; a flagged folder file stays in its folder and is recorded with its images once saving
    works again. One error line for the outage, one info line when it ends."""
    import inspector.io.media as media

    real_write, full = media.atomic_write, {"disk": True}

    def atomic_write(target, data):  # the original image gets written, then the disk is full
        if full["disk"] and target.name.endswith(".overlay.jpg"):
            raise OSError(28, "No space left on device")
        return real_write(target, data)

    monkeypatch.setattr(media, "atomic_write", atomic_write)
    video = write_video(tmp_path / "line.avi", [part_image(i, 10 <= i < 22, size=48) for i in range(40)])
    doc = line_config(
        tmp_path,
        write_double(tmp_path / "model"),
        [
            {"kind": "camera", "name": "cam", "uri": str(video), "realtime": False},
            {"kind": "folder", "name": "scan", "path": str(tmp_path / "in")},
        ],
        [{"kind": "mqtt", "name": "mq"}],
    )
    cfg = WatchConfig(**doc)
    col = MqttCollector(f"inspector/{cfg.line}/cam/alert")
    try:
        with caplog.at_level("INFO", logger="inspector.watch"), running(cfg) as w:
            wait_for(lambda: w.store.counters().get("cam", {}).get("scored") == 40, 30, what="40 frames")
            wait_for(lambda: len(col.messages) == 1, 10, what="the alert")
            [row] = flagged(w.store)
            assert (row.source, row.image_path, row.overlay_path, row.map_path) == ("cam", None, None, None)
            assert col.messages[0][1]["image_path"] is None and col.messages[0][1]["idempotency_key"] == row.frame_key
            assert not any(p.is_file() for p in w.store.media_dir.rglob("*"))  # the written original is removed
            assert 'inspector_media_unsaved_total{source="cam"} 1.0' in generate_latest(w.metrics.registry).decode()

            drop(tmp_path / "in", "bright.png", part_image(1, True))
            time.sleep(1.0)  # tried and released: still in the folder, not recorded
            assert (tmp_path / "in" / "bright.png").exists() and len(flagged(w.store)) == 1
            full["disk"] = False
            wait_for(lambda: len(flagged(w.store)) == 2, 20, what="the folder file after the disk is freed")
            scan = flagged(w.store)[1]
            assert scan.source == "scan" and (w.store.media_dir / scan.image_path).stat().st_size > 0
        errors = [r for r in caplog.records if "cannot save the images of flagged frames" in r.getMessage()]
        assert len(errors) == 1 and errors[0].levelname == "ERROR"
        assert "works again" in caplog.text
    finally:
        col.close()


def test_a_backlog_is_scored_in_batches_across_sources_in_order_and_a_bad_frame_fails_alone(tmp_path):
    """Two folders with a backlog: rounds score several files in one call, each folder's files are decided in
    their order (flagged ids follow the file order), and a file the scorer refuses is quarantined while the
    others of its batch are recorded."""
    doc = line_config(
        tmp_path,
        write_double(tmp_path / "model"),
        [{"kind": "folder", "name": s, "path": str(tmp_path / s)} for s in ("a", "b")],
    )
    for s in ("a", "b"):
        for i in range(10):
            drop(tmp_path / s, f"p{i:02d}.png", part_image(i, i % 3 == 0))
    drop(tmp_path / "a", "p10x.png", np.zeros((1, 1, 3), np.uint8))  # the scorer refuses a 1x1 image
    cfg = WatchConfig(**doc)
    scorer = load_scorer(cfg.model)
    sizes: list[int] = []
    real_batch, real_one = scorer.score_batch, scorer.score

    def score_batch(frames, **kw):
        sizes.append(len(frames))
        if any(f.shape[0] == 1 for f in frames):
            raise ValueError("frame too small")
        return real_batch(frames, **kw)

    scorer.score_batch = score_batch
    scorer.score = lambda img, **kw: real_one(img, **kw) if img.shape[0] > 1 else 1 / 0
    with running(cfg, scorer) as w:
        wait_for(
            lambda: all(w.store.counters().get(s, {}).get("scored") == 10 for s in ("a", "b")), 30, what="both backlogs"
        )
        wait_for(lambda: (tmp_path / "a/quarantine/p10x.png.reason.txt").exists(), 10, what="the bad file")
        rows = flagged(w.store)
    assert max(sizes) > 2  # scored together
    for s in ("a", "b"):
        assert [r.origin for r in rows if r.source == s] == ["p00.png", "p03.png", "p06.png", "p09.png"]
    assert "ZeroDivisionError" in (tmp_path / "a/quarantine/p10x.png.reason.txt").read_text()
