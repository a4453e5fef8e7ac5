"""The thin watch loop: source -> scorer -> decision -> writer (store + outbox) -> sinks.

Everything that decides is a pure function in `decisions`; everything that touches the outside world
is in `inspector.io`. The loop thread reads and scores one frame at a time and decides; the writer
thread commits results in order while the next frame is scored; the outbox sender delivers alerts.
A stop request is honoured between frames, and the writer commits every frame already scored.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from inspector.errors import ImageError
from inspector.io.camera import CameraSource, FrameItem
from inspector.data.images import read_image
from inspector.io.outbox import Sender
from inspector.io.sinks import Sink
from inspector.io.sources import FileItem, FolderSource
from inspector.io.spool import open_spool
from inspector.io.store import ScoredFrame, Store
from inspector.config.line import CameraSourceConfig, Rules, WatchConfig, source_rules
from inspector.watcher.decisions import AlertState, effective_threshold, is_anomalous, should_alert
from inspector.watcher.ops import Metrics
from inspector.watcher.writer import Job, Writer

log = logging.getLogger("inspector.watch")


@dataclass
class _Source:
    src: FolderSource | CameraSource
    rules: Rules
    state: AlertState = field(default_factory=AlertState)


class _ScoringFailed(Exception):
    """The scorer raised on this input (the message says why)."""


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc)


class Watcher:
    """Runs a line: `run(stop)` until `stop` is set. `scorer` has the `inspector.runtime.Scorer` interface."""

    DISK_CHECK_S = 5.0  # how often the media disk's free space is measured
    STORE_RETRY_S = 2.0  # folder inputs released by a store failure are offered again after this

    def __init__(self, cfg: WatchConfig, scorer: Any, store: Store, sinks: dict[str, Sink], metrics: Metrics | None = None) -> None:
        self.cfg, self.scorer, self.store, self.sinks = cfg, scorer, store, sinks
        self.metrics = metrics or Metrics()
        self.sources = [
            _Source(CameraSource(c) if isinstance(c, CameraSourceConfig) else FolderSource(c), source_rules(cfg, c))
            for c in cfg.sources
        ]
        self.own = [c.name for c in cfg.sources]  # a shared store may hold other lines' rows
        self.sender = Sender(store, sinks, cfg.outbox.backoff_min_s, cfg.outbox.backoff_max_s, self._on_alert, self.own)
        self.writer = Writer(store, cfg.line, list(sinks), cfg.store.save_map, self.metrics, self.sender.notify,
                             self._store_down, spool=open_spool(cfg, store.media_dir))
        self.wake = threading.Event()
        self.heartbeat = time.monotonic()
        self._due = {"reload": 0.0, "prune": 0.0, "gauges": 0.0}
        self._store_ok = True  # False from a failed store call until the next one that works (one line each way)
        self._folders_wait_until = 0.0  # folder inputs released by a store failure are offered again after this
        self.media_free_mb: float | None = None  # free space where flagged images go; None until measured
        self._disk_unknown = False  # the last measurement failed (warned once)

    def run(self, stop: threading.Event) -> None:
        """Score until `stop` is set, then commit what was scored and stop; pending alerts stay in the outbox."""
        self.metrics.set_model(self.scorer.version)
        self.sender.start()
        self.writer.start()
        # its own thread: statvfs on a hung network mount blocks, and must not stop the scoring
        threading.Thread(target=self._watch_disk, args=(stop,), name="disk-watch", daemon=True).start()
        for s in self.sources:
            s.src.start(self.wake)
        log.info("watching line %s: %s with model %s", self.cfg.line,
                 ", ".join(f"{s.src.kind} {s.src.name}" for s in self.sources), self.scorer.version)
        try:
            while not stop.is_set():
                self.heartbeat = time.monotonic()
                busy = self.step(stop)
                self._periodic()
                if not busy:
                    self.wake.wait(0.2)
                    self.wake.clear()
        finally:
            for s in self.sources:
                s.src.stop()
            self.writer.stop()
            self.sender.stop()
            try:
                pending = str(sum(self.store.pending_count(self.own).values()))
            except SQLAlchemyError:
                pending = "an unknown number of (store unavailable)"
            log.info("stopped line %s; %s alerts still pending", self.cfg.line, pending)

    def step(self, stop: threading.Event | None = None) -> bool:
        """One round over the sources, at most one item each; True when something was processed."""
        busy = False
        folders_wait = time.monotonic() < self._folders_wait_until  # cameras go on: the writer holds their frames
        for s in self.sources:
            if stop is not None and stop.is_set():
                break
            if folders_wait and isinstance(s.src, FolderSource):
                continue
            item = s.src.poll()
            if isinstance(s.src, CameraSource):
                self._count_dropped(s)
            if item is None:
                continue
            busy = True
            try:
                if isinstance(item, FileItem):
                    self._process_file(s, item)
                else:
                    self._process_frame(s, item)
            except SQLAlchemyError as e:
                self._store_down(e)
                if isinstance(item, FileItem):
                    s.src.release(item)  # type: ignore[union-attr]
        return busy

    def _process_file(self, s: _Source, item: FileItem) -> None:
        src: FolderSource = s.src  # type: ignore[assignment]
        if item.maybe_done and (done := self.store.ledger_status(item.key)) is not None:
            if done[0] != "quarantined":
                log.info("folder %s: %s was already recorded (%s); finishing it", src.name, item.relpath, done[0])
                src.finish(item)
                return
            # read again: it came back from quarantine (fixed), or its move was cut short; with the same key it
            # was complete when judged, so no wait for its writer this time
            item = replace(item, complete=True)
        try:
            img, data = read_image(item.path, src.cfg.max_pixels, int(src.cfg.max_file_mb * 2**20))
        except ImageError as e:
            if not item.complete:  # maybe still being written: never quarantine a file its writer still holds
                if src.defer(item):
                    log.info("folder %s: %s is not readable yet (%s); waiting until it is closed or unchanged for "
                             "%.0f s", src.name, item.relpath, e, src.cfg.incomplete_wait_s, extra={"source": src.name})
                return
            self._quarantine(src, item, e)
            return
        try:
            self._score(s, img, item, data, item.path.suffix.lower() or ".png", item.relpath)
        except _ScoringFailed as e:
            self._quarantine(src, item, e)

    def _quarantine(self, src: FolderSource, item: FileItem, e: Exception) -> None:
        self.store.record_error(src.name, _utc(time.time()), item.key, str(item.path), str(e))
        self.metrics.errors.labels(src.name).inc()
        log.warning("folder %s: quarantined %s: %s", src.name, item.relpath, e, extra={"source": src.name})
        src.quarantine(item, str(e))

    def _process_frame(self, s: _Source, item: FrameItem) -> None:
        try:
            self._score(s, item.frame, item, item.frame, "." + s.src.cfg.image_format, str(s.src.cfg.uri))
        except _ScoringFailed as e:
            log.error("camera %s: frame %d: %s", s.src.name, item.index, e)
            self.metrics.errors.labels(s.src.name).inc()
            self.store.record_error(s.src.name, _utc(time.time()))

    def _score(self, s: _Source, img: np.ndarray, item: FileItem | FrameItem, original: bytes | np.ndarray,
               ext: str, origin: str) -> None:
        """Score and decide here; the writer saves, commits and moves the file."""
        thr = effective_threshold(self.scorer.threshold, s.rules)
        overridden = s.rules.threshold is not None or s.rules.threshold_scale != 1.0
        t0 = time.perf_counter()
        try:
            res = self.scorer.score(img, overlay=False, threshold=thr if overridden else None)
        except Exception as e:  # noqa: BLE001 - one bad frame must not stop the line
            raise _ScoringFailed(f"scoring failed ({type(e).__name__}: {e})") from None
        self.metrics.latency.labels(s.src.name).observe(time.perf_counter() - t0)
        now = time.time()
        anomalous = is_anomalous(res.raw_score, thr)
        decision, s.state = should_alert(s.state, anomalous, now, s.rules)
        is_file = isinstance(item, FileItem)
        frame = ScoredFrame(s.src.name, item.key, _utc(now), res.raw_score / thr, res.raw_score, thr, anomalous,
                            str(item.path) if is_file else None)
        job = Job(s.src, item if is_file else None, frame, decision.flag, decision.alert, model_version=self.scorer.version,
                  origin=origin)
        if decision.flag:
            job.img, job.amap, job.original, job.ext = img, res.anomaly_map, original, ext
        self.writer.submit(job)

    def _count_dropped(self, s: _Source) -> None:
        n = s.src.take_dropped()  # type: ignore[union-attr]
        if n:
            self.metrics.dropped.labels(s.src.name).inc(n)
            try:
                self.store.add_dropped(s.src.name, n, _utc(time.time()))
            except SQLAlchemyError as e:
                self._store_down(e)

    def _store_down(self, e: Exception) -> None:
        """Inputs wait until the store answers again: files in their folder (offered again every STORE_RETRY_S),
        camera frames, still scored, in the writer's spool."""
        if self._store_ok:
            log.error("store unavailable (%s); folder inputs wait in their folder and camera frames in the spool "
                      "until it is back", str(e).splitlines()[0])
        self._store_ok = False
        self._folders_wait_until = time.monotonic() + self.STORE_RETRY_S

    def _periodic(self) -> None:
        mono = time.monotonic()
        if mono >= self._due["reload"]:
            self._due["reload"] = mono + self.cfg.model.reload_check_s
            self._reload()
        if mono < self._due["gauges"]:
            return
        self._due["gauges"] = mono + 1.0
        for s in self.sources:
            self.metrics.queue.labels(s.src.name).set(s.src.depth())
        try:
            for sink, n in {**{k: 0 for k in self.sinks}, **self.store.pending_count(self.own)}.items():
                self.metrics.outbox.labels(sink).set(n)
            if mono >= self._due["prune"]:
                self._due["prune"] = mono + 600
                self.store.prune(_utc(time.time()), self.cfg.store.keep_scores_days, self.cfg.store.max_score_rows,
                                 sources=self.own)
        except SQLAlchemyError as e:
            self._store_down(e)
            return
        if not self._store_ok:  # the gauges read the store once a second: it answers again
            log.info("store available again")
            self._store_ok = True

    @property
    def disk_low(self) -> bool:
        low = self.cfg.store.min_free_mb
        return bool(low) and self.media_free_mb is not None and self.media_free_mb < low

    def _watch_disk(self, stop: threading.Event) -> None:
        self._check_disk()
        while not stop.wait(self.DISK_CHECK_S):
            self._check_disk()

    def _check_disk(self) -> None:
        """Free space on the media folder's disk: a gauge, and one error when it falls below `min_free_mb`."""
        was_low = self.disk_low
        try:
            free = shutil.disk_usage(self.store.media_dir).free
        except OSError as e:  # e.g. a network mount gone: saving media fails too, and is retried
            if not self._disk_unknown:
                log.warning("cannot measure free space of %s (%s)", self.store.media_dir, e)
                self._disk_unknown = True
            return
        self._disk_unknown = False
        self.metrics.media_free.set(free)
        self.media_free_mb = free / 2**20
        if self.disk_low and not was_low:
            log.error("only %.0f MB free on the disk of %s (store.min_free_mb %d): flagged images can soon not be "
                      "saved; free space or move store.media_dir", self.media_free_mb, self.store.media_dir,
                      self.cfg.store.min_free_mb)
        elif was_low and not self.disk_low:
            log.info("%.0f MB free on the disk of %s again", self.media_free_mb, self.store.media_dir)

    def _reload(self) -> None:
        """Hot reload between frames when `current` moved; a broken new version keeps the old one."""
        old = self.scorer.version
        try:
            changed = self.scorer.reload_if_changed()
        except Exception as e:  # noqa: BLE001 - keep scoring with the model we have
            log.error("model reload failed, keeping %s (%s)", old, e)
            return
        if changed:
            log.info("now scoring with model %s (was %s)", self.scorer.version, old)
            self.metrics.set_model(self.scorer.version)

    def _on_alert(self, sink: str, delivered: bool, _alert: Any) -> None:
        self.metrics.alerts.labels(sink, "delivered" if delivered else "failed").inc()

    def health(self) -> dict:
        """For /health: ok while the loop turns and the store answers."""
        age = time.monotonic() - self.heartbeat
        try:
            pending, store_ok = self.store.pending_count(self.own), True
        except SQLAlchemyError:
            pending, store_ok = {}, False
        sources = {s.src.name: {"kind": s.src.kind, "waiting": s.src.depth(),
                                **({"connected": s.src.connected, "finished": s.src.finished}
                                   if isinstance(s.src, CameraSource) else {})} for s in self.sources}
        free = None if self.media_free_mb is None else round(self.media_free_mb)
        return {"ok": store_ok and age < 60 and not self.disk_low, "line": self.cfg.line,
                "model_version": self.scorer.version, "loop_age_s": round(age, 2), "store_ok": store_ok,
                "media_free_mb": free, "disk_low": self.disk_low, "writer_queue": self.writer.depth(),
                "camera_frames_held": self.writer.held(),
                "outbox_pending": pending, "sources": sources}
