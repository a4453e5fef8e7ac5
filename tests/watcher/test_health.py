"""The watcher's bookkeeping decisions as table tests: disk floor, store-outage wait, /health."""

from __future__ import annotations

import pytest

from inspector.watcher import health
from inspector.watcher.disk import is_low
from inspector.watcher.outage import StoreOutage, replayable_wait


@pytest.mark.parametrize(
    "free, floor, low",
    [(None, 1024, False), (2000.0, 1024, False), (1000.0, 1024, True), (5.0, 0, False), (1024.0, 1024, False)],
)
def test_disk_is_low_only_below_a_set_floor(free, floor, low):
    assert is_low(free, floor) is low


@pytest.mark.parametrize("now, until, wait", [(10.0, 12.0, True), (12.0, 12.0, False), (13.0, 12.0, False)])
def test_files_wait_until_the_retry_time(now, until, wait):
    assert replayable_wait(now, until) is wait


def test_outage_says_once_each_way(caplog):
    o = StoreOutage(retry_s=60)
    with caplog.at_level("INFO", logger="inspector.watch"):
        for _ in range(3):
            o.failed(OSError("connection refused\nmore"))
        assert not o.ok and o.replayable_wait()
        o.answered()
        o.answered()
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == [
        "store unavailable (connection refused); folder inputs wait in their folder and camera frames in "
        "the spool until it is back",
        "store available again",
    ]
    assert o.ok


@pytest.mark.parametrize(
    "store_ok, age, disk_low, ok",
    [(True, 1.0, False, True), (False, 1.0, False, False), (True, 61.0, False, False), (True, 1.0, True, False)],
)
def test_health_is_ok_while_loop_store_and_disk_are(store_ok, age, disk_low, ok):
    assert health.is_ok(store_ok, age, disk_low) is ok


def test_health_report_without_a_store_answer():
    doc = health.report(
        line="l1",
        model_version="v3",
        loop_age_s=0.123,
        pending=None,
        media_free_mb=2047.6,
        disk_low=False,
        writer_queue=2,
        held=5,
        sources={"cam": {"kind": "camera"}},
    )
    assert doc == {
        "ok": False,
        "line": "l1",
        "model_version": "v3",
        "loop_age_s": 0.12,
        "store_ok": False,
        "media_free_mb": 2048,
        "disk_low": False,
        "writer_queue": 2,
        "camera_frames_held": 5,
        "outbox_pending": {},
        "sources": {"cam": {"kind": "camera"}},
    }
