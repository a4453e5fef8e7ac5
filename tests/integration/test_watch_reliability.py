"""Reliability of the watcher as a real process: kill -9 during a backlog, sinks down, bad inputs.

Real services: Mosquitto on 127.0.0.1:1883 (and a private Mosquitto on a free port that this test
stops and restarts), local HTTP receivers. The scorer is the test double (see tests/support.py).
"""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.config.line import WatchConfig
from tests.support import (
    HookServer,
    MqttCollector,
    big_png,
    drop,
    free_port,
    line_config,
    part_image,
    port_open,
    spawn_watcher,
    wait_for,
    write_config,
    write_double,
)
from tests.watcher.test_loop import flagged, running


def db_rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as c:
        return c.execute(sql).fetchall()


def test_kill_9_during_backlog_scores_every_file_exactly_once(tmp_path):
    n, bright = 300, {i for i in range(300) if i % 5 == 0}
    for i in range(n):
        drop(tmp_path / "in", f"p{i:03d}.png", part_image(i, i in bright, size=24))
    doc = line_config(
        tmp_path,
        write_double(tmp_path / "model", delay_s=0.01),
        [{"kind": "folder", "name": "scan", "path": str(tmp_path / "in")}],
        [{"kind": "mqtt", "name": "mq"}],
    )
    config = write_config(tmp_path / "line.yaml", doc)
    col = MqttCollector(f"inspector/{doc['line']}/+/alert")
    processed = tmp_path / "in" / "processed"
    rng = random.Random(1234)
    try:
        for _ in range(5):  # kill -9 at random moments while the backlog is being worked off
            before = len(list(processed.glob("*.png"))) if processed.exists() else 0
            proc = spawn_watcher(config, tmp_path / "watch.log")
            wait_for(
                lambda: len(list(processed.glob("*.png"))) > before + 5 or proc.poll() is not None,  # noqa: B023
                60,
                what="progress",
            )
            time.sleep(rng.uniform(0, 0.4))
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        assert len(list(processed.glob("*.png"))) < n, "the backlog finished before the last kill"
        proc = spawn_watcher(config, tmp_path / "watch.log")
        db = tmp_path / "store" / "store.db"
        wait_for(lambda: len(list(processed.glob("*.png"))) == n, 120, what="whole backlog")
        wait_for(
            lambda: db_rows(db, "SELECT count(*) FROM outbox WHERE delivered_at IS NULL") == [(0,)],
            60,
            what="outbox drained",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        keys = {k for (k,) in db_rows(db, "SELECT frame_key FROM flagged")}
        wait_for(lambda: col.keys() >= keys, 30, what="every alert at the subscriber")
    finally:
        col.close()
    log = (tmp_path / "watch.log").read_text()
    assert db_rows(db, "SELECT scored, flagged, errors FROM frames") == [(n, len(bright), 0)]  # each file once
    assert db_rows(db, "SELECT count(*), count(DISTINCT path) FROM processed WHERE status = 'scored'") == [(n, n)]
    origins = [o for (o,) in db_rows(db, "SELECT origin FROM flagged ORDER BY origin")]
    assert origins == [f"p{i:03d}.png" for i in sorted(bright)]
    assert col.keys() == keys  # at-least-once delivery, deduplicated by idempotency key
    assert not list((tmp_path / "in").glob("*.png")) and not list((tmp_path / "in/quarantine").iterdir())
    assert "Traceback" not in log


def _mosquitto(port: int, data: Path) -> subprocess.Popen:
    conf = data / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {data}/\nautosave_interval 1\n"
    )
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: port_open(port), 10, what="mosquitto")
    return proc


@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs the mosquitto binary to stop/start a broker")
def test_sinks_down_for_a_while_deliver_everything_in_order(tmp_path):
    """MQTT broker stopped and webhook answering 500: alerts wait in the outbox and arrive in order."""
    port = free_port()
    broker = _mosquitto(port, tmp_path)
    hook = HookServer()
    hook.status = 500
    sources = [{"kind": "folder", "name": s, "path": str(tmp_path / s)} for s in ("s1", "s2")]
    sinks = [{"kind": "mqtt", "name": "mq", "port": port}, {"kind": "webhook", "name": "hook", "url": hook.url}]
    cfg = WatchConfig(**line_config(tmp_path, write_double(tmp_path / "model"), sources, sinks))
    col = MqttCollector(f"inspector/{cfg.line}/+/alert", port=port, client_id=f"col-{cfg.line}", clean=False)
    try:
        with running(cfg) as w:
            for i in range(3):
                for s in ("s1", "s2"):
                    drop(tmp_path / s, f"{i:02d}.png", part_image(i, True))
            wait_for(lambda: len(col.messages) == 6, 30, what="first alerts over MQTT")
            broker.send_signal(signal.SIGTERM)
            broker.wait(10)
            for i in range(3, 8):
                for s in ("s1", "s2"):
                    drop(tmp_path / s, f"{i:02d}.png", part_image(i, True))
            wait_for(lambda: w.store.pending_count() == {"mq": 10, "hook": 16}, 30, what="alerts waiting")
            time.sleep(1.5)  # down "for a while": several retries fail
            assert len(col.messages) == 6 and hook.requests == [] and hook.attempts >= 4
            broker = _mosquitto(port, tmp_path)
            hook.status = 200
            wait_for(lambda: w.store.pending_count() == {}, 60, what="outbox drained")
            wait_for(lambda: len(col.keys()) == 16, 30, what="all MQTT alerts")
            rows = flagged(w.store)
        for got in ([p for _, p in col.messages], hook.payloads()):
            for s in ("s1", "s2"):
                expected = [r.frame_key for r in rows if r.source == s]
                seen = list(dict.fromkeys(p["idempotency_key"] for p in got if p["source"] == s))
                assert seen == expected  # all of them, in order per source
    finally:
        col.close()
        hook.close()
        broker.terminate()
        broker.wait(10)


def _drop_file_read_override() -> None:
    """Run as root without CAP_DAC_OVERRIDE/READ_SEARCH, so a mode-000 file is really unreadable."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # PR_CAPBSET_DROP = 24
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _bad_inputs(d: Path) -> dict[str, str]:
    """Write the bad files; returns name -> expected quarantine reason."""
    d.mkdir(parents=True)
    (d / "zero.png").write_bytes(b"")
    (d / "trunc.jpg").write_bytes(cv2.imencode(".jpg", part_image(1, False, 64))[1].tobytes()[:700])
    (d / "text.png").write_text("not really a png\n")
    big_png(d / "huge.png")
    cv2.imwrite(str(d / "noperm.png"), part_image(2, False))
    os.chmod(d / "noperm.png", 0)
    return {
        "zero.png": "file is empty",
        "trunc.jpg": "truncated JPEG",
        "text.png": "not a PNG, JPEG, BMP or TIFF",
        "huge.png": "20000x20000 pixels is over",
        "noperm.png": "permission denied",
    }


def test_bad_inputs_are_quarantined_with_one_line_each_and_the_watcher_goes_on(tmp_path):
    expected = _bad_inputs(tmp_path / "in")
    cv2.imwrite(str(tmp_path / "in/gray.png"), np.full((30, 40), 200, np.uint8))  # these three are fine
    cv2.imwrite(str(tmp_path / "in/rgba.png"), np.full((30, 40, 4), 60, np.uint8))
    cv2.imwrite(str(tmp_path / "in/deep.png"), np.full((30, 40), 60 * 257, np.uint16))
    # written before the watcher starts, so never seen closed: quarantined once unchanged for incomplete_wait_s
    sources = [
        {"kind": "folder", "name": "scan", "path": str(tmp_path / "in"), "stable_s": 0.2, "incomplete_wait_s": 1},
        {"kind": "camera", "name": "deadcam", "uri": f"rtsp://127.0.0.1:{free_port()}/s", "reconnect_max_s": 1},
    ]
    config = write_config(tmp_path / "line.yaml", line_config(tmp_path, write_double(tmp_path / "model"), sources))
    log_path = tmp_path / "watch.log"
    proc = spawn_watcher(config, log_path, preexec_fn=_drop_file_read_override if os.geteuid() == 0 else None)
    q, done = tmp_path / "in/quarantine", tmp_path / "in/processed"
    try:
        wait_for(
            lambda: len(list(q.glob("*.reason.txt"))) == 5 and len(list(done.iterdir())) == 3,
            60,
            what="quarantine and scoring",
        )
        drop(tmp_path / "in", "later.png", part_image(3, True))  # still running and scoring
        wait_for(lambda: (done / "later.png").exists(), 30, what="a file after the bad ones")
        wait_for(lambda: log_path.read_text().count("camera deadcam: cannot open") >= 1, 30, what="camera retries")
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
    assert rc == 0
    log = log_path.read_text()
    for name, reason in expected.items():
        assert reason in (q / f"{name}.reason.txt").read_text(), name
        lines = [ln for ln in log.splitlines() if f"quarantined {name}:" in ln]
        assert len(lines) == 1 and reason in lines[0], (name, lines)
    assert sorted(p.name for p in done.iterdir()) == ["deep.png", "gray.png", "later.png", "rgba.png"]
    assert "Traceback" not in log
    db = tmp_path / "store" / "store.db"
    assert db_rows(db, "SELECT source, scored, flagged, errors FROM frames WHERE source = 'scan'") == [
        ("scan", 4, 2, 5)
    ]
