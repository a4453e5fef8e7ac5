"""The hot folder's lost-part holes and the watcher's start-up and outage lines (issue 19, item 3).

A slowly written file is waited for, not quarantined; a file back from quarantine is scored; PostgreSQL down at
start is waited for; the example config serves /health on loopback; an unreachable camera says so once per outage;
a missing model stops the watcher before the store is touched. Real processes where the point is a log line or
an exit code.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.config.line import WatchConfig, load_config
from tests.integration.test_watch_reliability import _drop_file_read_override, db_rows
from tests.support import (
    PYTHON,
    ROOT,
    MqttCollector,
    drop,
    line_config,
    part_image,
    spawn_watcher,
    temp_database,
    wait_for,
    watcher_env,
    write_config,
    write_double,
    write_video,
)
from tests.watcher.test_loop import flagged, running
from tests.watcher.test_writer import CuttableProxy


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def test_a_slowly_written_file_is_waited_for_and_scored_not_quarantined(tmp_path, caplog):
    """Half the file, a 3 s pause (longer than stable_s: 1.0), the rest: the file is scored once it is closed."""
    cfg = WatchConfig(
        **line_config(
            tmp_path,
            write_double(tmp_path / "model"),
            [{"kind": "folder", "name": "scan", "path": str(tmp_path / "in")}],
        )
    )
    data = _png(part_image(7, True, size=64))
    caplog.set_level(logging.INFO, logger="inspector.watch")
    (tmp_path / "in").mkdir()
    with running(cfg) as w:
        with open(tmp_path / "in" / "slow.png", "wb") as f:  # a network share or a slow camera PC
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(3.0)
            f.write(data[len(data) // 2 :])
        wait_for(lambda: w.store.counters().get("scan", {}).get("scored") == 1, 30, what="the slow file scored")
        rows = flagged(w.store)
        wait_for(lambda: (tmp_path / "in/processed/slow.png").exists(), 10, what="the file moved after its commit")
    assert [r.origin for r in rows] == ["slow.png"]
    assert (tmp_path / "in/processed/slow.png").read_bytes() == data
    assert not list((tmp_path / "in/quarantine").iterdir())
    assert "quarantined" not in caplog.text
    waiting = [r.getMessage() for r in caplog.records if "is not readable yet" in r.getMessage()]
    assert len(waiting) == 1 and "truncated PNG" in waiting[0], waiting


def test_an_unreadable_file_never_closed_is_quarantined_after_the_stated_wait(tmp_path):
    """Still truncated after incomplete_wait_s unchanged (its writer died): quarantined, once, with the reason."""
    cfg = WatchConfig(
        **line_config(
            tmp_path,
            write_double(tmp_path / "model"),
            [
                {
                    "kind": "folder",
                    "name": "scan",
                    "path": str(tmp_path / "in"),
                    "stable_s": 0.2,
                    "incomplete_wait_s": 1.5,
                }
            ],
        )
    )
    data = _png(part_image(3, False, size=64))
    (tmp_path / "in").mkdir()
    with running(cfg) as w:
        f = open(tmp_path / "in" / "dead.png", "wb")  # never closed while the watcher looks
        try:
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(0.8)  # stable_s has passed, incomplete_wait_s has not
            assert not (tmp_path / "in/quarantine/dead.png").exists()
            reason = tmp_path / "in/quarantine/dead.png.reason.txt"
            wait_for(reason.exists, 20, what="quarantine after the wait")
        finally:
            f.close()
        assert "truncated PNG" in reason.read_text()
        assert w.store.counters()["scan"]["errors"] == 1


def test_a_file_back_from_quarantine_is_scored_and_alerted(tmp_path):
    """Unreadable (mode 000, the watcher without root's override), quarantined; someone fixes the permission and
    moves it back: same name, size and mtime, so the same key. It is scored, flagged and alerted."""
    sources = [{"kind": "folder", "name": "scan", "path": str(tmp_path / "in"), "stable_s": 0.2}]
    doc = line_config(tmp_path, write_double(tmp_path / "model"), sources, [{"kind": "mqtt", "name": "mq"}])
    config = write_config(tmp_path / "line.yaml", doc)
    (tmp_path / "in").mkdir()
    staged = tmp_path / "part.png"
    staged.write_bytes(_png(part_image(5, True)))
    os.chmod(staged, 0)
    col = MqttCollector(f"inspector/{doc['line']}/+/alert")
    log_path, db = tmp_path / "watch.log", tmp_path / "store" / "store.db"
    proc = spawn_watcher(config, log_path, preexec_fn=_drop_file_read_override if os.geteuid() == 0 else None)
    q = tmp_path / "in/quarantine"
    try:
        wait_for(lambda: "watching line" in log_path.read_text(), 60, what="the watcher")
        os.replace(staged, tmp_path / "in/part.png")
        wait_for(lambda: (q / "part.png.reason.txt").exists(), 30, what="quarantine")
        assert "permission denied" in (q / "part.png.reason.txt").read_text()
        os.chmod(q / "part.png", 0o644)  # fixed ...
        os.replace(q / "part.png", tmp_path / "in/part.png")  # ... and dropped back in: mtime and size unchanged
        wait_for(lambda: (tmp_path / "in/processed/part.png").exists(), 30, what="the file scored")
        wait_for(lambda: len(col.messages) == 1, 30, what="its alert")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        col.close()
    assert rc == 0
    assert db_rows(db, "SELECT scored, flagged, errors FROM frames WHERE source = 'scan'") == [(1, 1, 1)]
    assert db_rows(db, "SELECT status, path FROM processed") == [("scored", str(tmp_path / "in/part.png"))]
    assert db_rows(db, "SELECT origin FROM flagged") == [("part.png",)]
    assert col.messages[0][1]["origin"] == "part.png"
    assert "already recorded" not in log_path.read_text()


def test_postgresql_down_at_start_is_waited_for_with_one_line(tmp_path):
    with contextlib.closing(CuttableProxy()) as proxy, temp_database() as direct_url:
        proxy.up = False  # refuses every connection, as a database that is restarting does
        doc = line_config(
            tmp_path,
            write_double(tmp_path / "model"),
            [{"kind": "folder", "name": "scan", "path": str(tmp_path / "in")}],
        )
        doc["store"] = {"url": direct_url.replace(":5432/", f":{proxy.port}/"), "media_dir": str(tmp_path / "media")}
        config = write_config(tmp_path / "line.yaml", doc)
        log_path = tmp_path / "watch.log"
        proc = spawn_watcher(config, log_path)
        try:
            wait_for(lambda: "store unavailable at start" in log_path.read_text(), 60, what="the waiting line")
            time.sleep(5)  # more than two retries
            assert proc.poll() is None, log_path.read_text()
            drop(tmp_path / "in", "a.png", part_image(1, False))
            proxy.up = True
            wait_for(lambda: (tmp_path / "in/processed/a.png").exists(), 60, what="the file scored, the store up")
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(30)
    assert rc == 0
    log = log_path.read_text()
    assert log.count("store unavailable at start") == 1 and log.count("store available again") == 1, log
    assert "Traceback" not in log


def test_the_example_config_serves_health_on_loopback():
    cfg = load_config(ROOT / "examples" / "line1.yaml")
    assert ipaddress.ip_address(cfg.ops.host).is_loopback
    assert "0.0.0.0" in (ROOT / "examples" / "line1.yaml").read_text()  # and it says how to open it


class FlakyCamera:
    """An HTTP 'camera' on loopback: while down it accepts and hangs up at once (counting the tries), when up it
    serves a video file."""

    def __init__(self, video: Path) -> None:
        self.video, self.up, self.tries = video.read_bytes(), False, 0
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._srv.getsockname()[1]}/line.avi"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            with conn:
                if not self.up:
                    self.tries += 1
                    continue
                conn.recv(65536)
                head = f"HTTP/1.0 200 OK\r\nContent-Type: video/x-msvideo\r\nContent-Length: {len(self.video)}\r\n\r\n"
                with contextlib.suppress(OSError):
                    conn.sendall(head.encode() + self.video)

    def close(self) -> None:
        self._srv.close()


def test_an_unreachable_camera_says_so_once_and_once_when_back(tmp_path):
    video = write_video(tmp_path / "line.avi", [part_image(i, False, size=48) for i in range(10)])
    cam = FlakyCamera(video)
    sources = [
        {
            "kind": "camera",
            "name": "cam",
            "uri": cam.url,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.2,
            "open_timeout_s": 2,
        }
    ]
    config = write_config(tmp_path / "line.yaml", line_config(tmp_path, write_double(tmp_path / "model"), sources))
    log_path = tmp_path / "watch.log"
    proc = spawn_watcher(config, log_path)
    try:
        wait_for(lambda: cam.tries >= 5, 60, what="five failed tries")
        before = log_path.read_text()
        cam.up = True
        wait_for(lambda: "camera cam: reading" in log_path.read_text(), 60, what="the camera back")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        cam.close()
    assert rc == 0
    lines = [ln for ln in before.splitlines() if ln.strip()]
    assert sum("camera cam:" in ln for ln in lines) == 1, before  # one line for the whole outage
    assert not [ln for ln in log_path.read_text().splitlines() if ln.startswith("[")]  # no raw FFmpeg/OpenCV lines
    back = [ln for ln in log_path.read_text().splitlines() if "camera cam: reading" in ln]
    assert "again after" in back[0] and "retries" in back[0], back


def test_a_missing_model_stops_the_watcher_before_the_store_is_created(tmp_path):
    import subprocess

    doc = line_config(tmp_path, tmp_path / "no-such-model", [{"kind": "folder", "name": "scan", "path": str(tmp_path)}])
    doc["model"].pop("scorer")  # the real runtime: its path is checked
    config = write_config(tmp_path / "line.yaml", doc)
    r = subprocess.run(
        [PYTHON, "-m", "inspector.cli.main", "watch", "--config", str(config)],
        cwd=ROOT,
        env=watcher_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1] == (
        f"inspector: error: model.path {tmp_path / 'no-such-model'}: no such model folder"
    )
    assert not (tmp_path / "store").exists()  # nothing created, nothing migrated


def test_a_quarantined_ledger_key_is_recorded_as_scored_when_it_comes_back(store):
    """The store's half of the round trip, on SQLite and PostgreSQL: a real duplicate is still refused."""
    from datetime import datetime, timezone

    from inspector.io.store import DuplicateFrame, ScoredFrame

    now = datetime.now(timezone.utc)
    store.record_error("scan", now, "key-1", "/in/a.png", "permission denied")
    frame = ScoredFrame("scan", "key-1", now, 0.4, 0.4, 1.0, False, "/in/a.png")
    store.record_frames([(frame, None)])
    assert store.ledger_status("key-1") == ("scored", None)
    assert store.counters()["scan"]["scored"] == 1 and store.counters()["scan"]["errors"] == 1
    with pytest.raises(DuplicateFrame):
        store.record_frames([(frame, None)])
    assert store.counters()["scan"]["scored"] == 1
