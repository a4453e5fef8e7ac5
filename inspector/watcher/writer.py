"""Commits scored frames in order on one thread, so saving and committing overlap the next frame's scoring.

For each job, in submission order: save the flagged item's image and heat map, commit the frame (ledger,
counters, flagged row, outbox rows) in one transaction, then move the input file. A kill before the
commit leaves the file where it was (scored again after a restart); a kill after it leaves a ledger entry
(the file is only moved). The queue is short, so the loop cannot run far ahead of the store. When the images
cannot be saved (disk full), a folder input waits in its folder and is retried; a camera frame, which exists
nowhere else, is recorded and alerted without them.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from inspector.io.camera import CameraSource
from inspector.io.media import MediaPaths, media_paths, save_media
from inspector.io.sources import FileItem, FolderSource
from inspector.io.store import DuplicateFrame, FlagRecord, ScoredFrame, Store
from inspector.preprocess import overlay
from inspector.watcher.decisions import alert_payload
from inspector.watcher.ops import Metrics

log = logging.getLogger("inspector.watch")


@dataclass
class Job:
    src: FolderSource | CameraSource
    item: FileItem | None  # the input file to move after the commit (None for camera frames)
    frame: ScoredFrame
    flag: bool = False
    alert: bool = False
    img: np.ndarray | None = None  # (H, W, 3) BGR, for the heat-map overlay
    amap: np.ndarray | None = None  # (H, W) anomaly map, 1.0 = threshold
    original: bytes | np.ndarray | None = None  # file bytes as received, or the camera frame
    ext: str = ".png"
    origin: str = ""
    model_version: str = ""


class Writer:
    """One writer thread behind a short FIFO queue; `submit` blocks when it is full (back-pressure)."""

    def __init__(self, store: Store, line: str, sinks: list[str], save_map: bool, metrics: Metrics,
                 on_alerts: Callable[[], None], on_store_error: Callable[[Exception], None], depth: int = 16,
                 max_batch: int = 16) -> None:
        self.store, self.line, self.sinks, self.save_map = store, line, sinks, save_map
        self.metrics, self.on_alerts, self.on_store_error = metrics, on_alerts, on_store_error
        self._q: queue.Queue[Job | None] = queue.Queue(maxsize=depth)
        self.max_batch = max_batch
        self._media_down = False  # the last flagged camera frame's images could not be saved (logged once)
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._q.put(job)

    def depth(self) -> int:
        return self._q.qsize()

    def stop(self, timeout_s: float = 60) -> None:
        """Commit everything already scored, then stop."""
        self._q.put(None)
        self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._q.get()]
            while batch[-1] is not None and len(batch) < self.max_batch and not self._q.empty():
                batch.append(self._q.get_nowait())  # a backlog commits in groups: one transaction each
            if batch[-1] is None:
                batch.pop()
                stopping = True
            if batch:
                self._write(batch)

    def _write(self, batch: list[Job]) -> None:
        """Media, then one transaction for the batch, then the file moves; a failed batch is retried one by one."""
        try:
            flags = [self._flag(job) if job.flag else None for job in batch]
            ids = self.store.record_frames([(job.frame, fl) for job, fl in zip(batch, flags)])
        except DuplicateFrame:
            if len(batch) > 1:
                for job in batch:
                    self._write([job])
                return
            log.info("%s: %s was already recorded; finishing it", batch[0].src.name, batch[0].origin)
            self._finish(batch[0])
            return
        except (SQLAlchemyError, OSError) as e:
            self.on_store_error(e)
            for job in batch:
                self._release(job)
            return
        except Exception:  # noqa: BLE001 - the writer must outlive any single frame
            log.exception("%s: could not record %d frames; they will be retried", batch[0].src.name, len(batch))
            for job in batch:
                self._release(job)
            return
        for job, flag, flagged_id in zip(batch, flags, ids):
            self._done(job, flag, flagged_id)

    def _done(self, job: Job, flag: FlagRecord | None, flagged_id: int | None) -> None:
        self.metrics.scored.labels(job.src.name).inc()
        if flag is not None:
            self.metrics.flagged.labels(job.src.name).inc()
            log.info("%s: flagged %s score %.2f (item %d%s)", job.src.name, job.origin, job.frame.score, flagged_id,
                     ", alert" if job.alert else ", in cooldown", extra={"source": job.src.name, "score": job.frame.score})
            if flag.alerts:
                self.on_alerts()
        try:
            self._finish(job)
        except OSError as e:  # recorded; the next scan finds the file, the ledger says it is done
            log.error("%s: cannot move %s (%s)", job.src.name, job.origin, e)
            self._release(job)

    def _flag(self, job: Job) -> FlagRecord:
        """Save image + heat map before the commit, so a committed row always has its files."""
        f = job.frame
        paths: MediaPaths | None = media_paths(f.source, f.frame_key, f.created_at, job.ext, self.save_map)
        try:
            save_media(self.store.media_dir, paths, job.original, overlay(job.img, job.amap), job.amap)
        except OSError as e:
            if job.item is not None:  # a folder input stays in its folder and is retried: nothing is lost
                raise
            self._unsaved(job, e)  # a camera frame exists nowhere else: recorded and alerted without images
            paths = None
        else:
            self._media_recovered()
        h, w = job.img.shape[:2]
        image, over = (paths.image, paths.overlay) if paths else (None, None)
        payload = alert_payload(line=self.line, source=f.source, frame_key=f.frame_key, created_at=f.created_at,
                                score=f.score, raw_score=f.raw_score, threshold=f.threshold,
                                model_version=job.model_version, image_path=image, overlay_path=over,
                                width=w, height=h, origin=job.origin)
        alerts = {name: payload for name in self.sinks} if job.alert else {}
        return FlagRecord(job.model_version, image, over, paths.map if paths else None, w, h, job.origin, alerts)

    def _unsaved(self, job: Job, e: OSError) -> None:
        """A flagged camera frame whose images cannot be written (disk full, media folder gone): count it, say so
        once per outage. Its row and alert go ahead without images (save_media left none half-written)."""
        self.metrics.media_unsaved.labels(job.src.name).inc()
        if not self._media_down:
            log.error("%s: cannot save the images of flagged frames in %s (%s); camera frames are recorded and "
                      "alerted without them until saving works again", job.src.name, self.store.media_dir, e)
        self._media_down = True

    def _media_recovered(self) -> None:
        if self._media_down:
            log.info("saving the images of flagged frames in %s works again", self.store.media_dir)
        self._media_down = False

    @staticmethod
    def _finish(job: Job) -> None:
        if job.item is not None:
            job.src.finish(job.item)  # type: ignore[union-attr]

    @staticmethod
    def _release(job: Job) -> None:
        if job.item is not None:
            job.src.release(job.item)  # type: ignore[union-attr]
