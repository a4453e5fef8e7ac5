"""The writer through a store outage: camera frames are held in memory and committed in order when the store
answers again; folder inputs stay in their folder; a row the store refuses is not held (on SQLite and PostgreSQL)."""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DataError, OperationalError

import inspector.watcher.writer as writer_mod
from inspector.io.schema import Flagged, Outbox, ScoreSample
from inspector.io.store import ScoredFrame
from inspector.watcher.ops import Metrics
from inspector.watcher.writer import Job, Writer
from tests.support import wait_for

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)


class FlakyStore:
    """The real store, behind a switch: while `fail` is set, commits raise it as a store would."""

    def __init__(self, store) -> None:
        self.store, self.media_dir, self.fail = store, store.media_dir, None

    def record_frames(self, items):
        if self.fail is not None:
            raise self.fail
        return self.store.record_frames(items)


class Folder:
    """A folder source double: records which inputs it was told to release."""

    name = "scan"

    def __init__(self) -> None:
        self.released: list[str] = []

    def release(self, item) -> None:
        self.released.append(item)


def camera_job(i: int, flagged: bool = False) -> Job:
    score = 1.5 if flagged else 0.3
    frame = ScoredFrame("cam", f"cam-{i:03d}", T0 + timedelta(seconds=i), score, score * 2, 2.0, flagged)
    job = Job(
        SimpleNamespace(name="cam"), None, frame, flag=flagged, alert=flagged, model_version="v1", origin="rtsp://cam"
    )
    if flagged:
        img = np.full((24, 32, 3), 90, np.uint8)
        job.img, job.amap, job.original, job.ext = img, np.ones((24, 32), np.float32), img, ".png"
    return job


@pytest.fixture
def writer(store, monkeypatch):
    monkeypatch.setattr(writer_mod, "RETRY_HELD_S", 0.05)
    flaky = FlakyStore(store)
    errors: list[Exception] = []
    w = Writer(flaky, "l1", ["mq"], False, Metrics(), lambda: None, errors.append, depth=4, max_batch=3)
    w.start()
    yield w, flaky, errors
    w.stop(10)


def rows(store, table, order):
    with store.engine.connect() as c:
        return c.execute(sa.select(table).order_by(order)).all()


def test_store_outage_holds_camera_frames_and_commits_them_in_order(writer, caplog):
    w, flaky, errors = writer
    store = flaky.store
    flaky.fail = OperationalError("INSERT", {}, ConnectionRefusedError("connection refused"))
    folder = Folder()
    with caplog.at_level(logging.INFO, logger="inspector.watch"):
        for i in range(20):  # more than the queue holds: scoring must not stall while the store is down
            w.submit(camera_job(i, flagged=i in (5, 12)))
            if i == 8:
                w.submit(Job(folder, "in/a.png", ScoredFrame("scan", "scan-a", T0, 0.2, 0.4, 2.0, False, "in/a.png")))
        wait_for(lambda: w.held() == 20, 10, what="20 camera frames held")
        assert folder.released == ["in/a.png"] and errors  # the folder file waits in its folder
        assert rows(store, ScoreSample, ScoreSample.id) == [] and rows(store, Flagged, Flagged.id) == []
        assert len([p for p in store.media_dir.rglob("*") if p.is_file()]) == 4  # both flagged frames' images saved

        flaky.fail = None  # the store answers again
        wait_for(lambda: w.held() == 0 and len(rows(store, ScoreSample, ScoreSample.id)) == 20, 10, what="the backlog")
    samples = rows(store, ScoreSample, ScoreSample.id)
    assert [r.created_at for r in samples] == [T0 + timedelta(seconds=i) for i in range(20)]  # in scoring order
    flagged = rows(store, Flagged, Flagged.id)
    assert [r.frame_key for r in flagged] == ["cam-005", "cam-012"]
    assert all((store.media_dir / r.image_path).stat().st_size > 0 for r in flagged)
    assert [r.sink for r in rows(store, Outbox, Outbox.id)] == ["mq", "mq"]  # their alerts wait in the outbox
    assert store.counters()["cam"]["scored"] == 20
    assert "not recorded" not in caplog.text


def test_a_row_the_store_refuses_is_not_held(writer, caplog):
    w, flaky, _ = writer
    flaky.fail = DataError("INSERT", {}, ValueError("value too long"))
    with caplog.at_level(logging.ERROR, logger="inspector.watch"):
        w.submit(camera_job(0))
        wait_for(
            lambda: "camera frames not recorded (the store refused them)" in caplog.text, 10, what="the error line"
        )
    assert w.held() == 0
    flaky.fail = None
    w.submit(camera_job(1))  # later frames are not blocked behind it
    wait_for(lambda: flaky.store.counters().get("cam", {}).get("scored") == 1, 10, what="the next frame")


class CuttableProxy:
    """A TCP proxy on loopback in front of the local PostgreSQL: `up = False` cuts every connection and refuses
    new ones (what a database restart or a network cut looks like to the watcher), `up = True` lets them through."""

    def __init__(self, port: int = 5432) -> None:
        import socket
        import threading

        self.target, self.up, self._conns = ("127.0.0.1", port), True, []
        self._lock = threading.Lock()
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = self._srv.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self._srv.accept()
            except OSError:
                return  # closed
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    def cut(self) -> None:
        import socket

        self.up = False
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.cut()
        self._srv.close()


def test_postgresql_cut_while_a_camera_runs_loses_no_frame_and_no_alert(tmp_path, caplog):
    """The watcher's connection to PostgreSQL is cut before a camera starts: its frames are scored and held, a
    hot-folder file waits in its folder, and once the database answers again all of them are recorded and each
    defect's alert is delivered once. One error line when the store goes away, one info line when it is back."""
    import threading

    from inspector.config.line import WatchConfig
    from inspector.io.sinks import build_sink
    from inspector.io.store import Store
    from inspector.watcher import load_scorer
    from inspector.watcher.loop import Watcher
    from tests.support import MqttCollector, drop, line_config, part_image, temp_database, write_double, write_video

    frames = [part_image(i, 60 <= i < 72, size=48) for i in range(120)]
    video = write_video(tmp_path / "line.avi", frames)
    with contextlib.closing(CuttableProxy()) as proxy, temp_database() as direct_url:
        via_proxy = direct_url.replace(":5432/", f":{proxy.port}/")
        doc = line_config(
            tmp_path,
            write_double(tmp_path / "model"),
            [
                {"kind": "camera", "name": "cam", "uri": str(video), "realtime": False},
                {"kind": "folder", "name": "scan", "path": str(tmp_path / "in")},
            ],
            [{"kind": "mqtt", "name": "mq"}],
        )
        doc["store"] = {"url": via_proxy, "media_dir": str(tmp_path / "media")}
        cfg = WatchConfig(**doc)
        col = MqttCollector(f"inspector/{cfg.line}/+/alert")
        store = Store.open(via_proxy, tmp_path / "media")  # migrated through the proxy, then the cut
        direct = Store.open(direct_url, tmp_path / "media")
        w = Watcher(cfg, load_scorer(cfg.model), store, {c.name: build_sink(c, cfg.line) for c in cfg.sinks})
        stop = threading.Event()
        proxy.cut()
        t = threading.Thread(target=w.run, args=(stop,))
        caplog.set_level(logging.INFO, logger="inspector.watch")
        t.start()
        try:
            drop(tmp_path / "in", "bright.png", part_image(1, True))
            wait_for(lambda: w.writer.held() == 120, 60, what="120 frames scored and held while the store is cut")
            assert w.health()["camera_frames_held"] == 120 and not w.health()["store_ok"]
            assert direct.counters() == {} and col.messages == [] and (tmp_path / "in" / "bright.png").exists()
            proxy.up = True
            wait_for(lambda: direct.counters().get("cam", {}).get("scored") == 120, 60, what="the held frames recorded")
            wait_for(lambda: direct.counters().get("scan", {}).get("flagged") == 1, 30, what="the folder file")
            wait_for(lambda: len(col.messages) == 2, 30, what="the two alerts")
            assert direct.counters()["cam"]["flagged"] == 1 and w.writer.held() == 0
            assert sorted(m[1]["source"] for m in col.messages) == ["cam", "scan"]
            wait_for(lambda: not (tmp_path / "in" / "bright.png").exists(), 10, what="the file moved after its commit")
        finally:
            stop.set()
            t.join(30)
            col.close()
            store.close()
            direct.close()
        assert not t.is_alive()
    down = [r.getMessage() for r in caplog.records if r.getMessage().startswith("store unavailable")]
    assert len(down) == 1, down
    assert "store available again" in caplog.text and "were not recorded" not in caplog.text
