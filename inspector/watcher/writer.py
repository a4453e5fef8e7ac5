"""Commits scored frames in order on one thread, so saving and committing overlap the next frame's scoring.

For each job, in submission order: save the flagged item's image and heat map, commit the frame (ledger,
counters, flagged row, outbox rows) in one transaction, then move the input file. A kill before the
commit leaves the file where it was (scored again after a restart); a kill after it leaves a ledger entry
(the file is only moved). The queue is short, so the loop cannot run far ahead of the store. A camera frame exists
nowhere else: when its images cannot be saved (disk full) it is recorded and alerted without them, and while the
store is unreachable it is held (`held`: in the line's spool on disk, so a kill loses none) and committed in
order once the store answers; a folder input in either case waits in its folder and is scored again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from inspector.data.preprocess import overlay
from inspector.io.media import MediaPaths, media_paths, save_media
from inspector.io.spool import Spool
from inspector.io.store import DuplicateFrame, FlagRecord, ScoredFrame, Store
from inspector.watcher.decisions import alert_payload
from inspector.watcher.held import HeldFrames
from inspector.watcher.ops import Metrics
from inspector.watcher.protocols import FrameSource, Input

log = logging.getLogger("inspector.watch")
RETRY_HELD_S = 2.0


def _store_unreachable(e: Exception) -> bool:
    """A store outage that passes (connection refused or lost, database locked), not a row the store refuses."""
    return isinstance(e, (OperationalError, OSError)) or (isinstance(e, DBAPIError) and e.connection_invalidated)


@dataclass
class Job:
    src: FrameSource
    item: Input | None  # a replayable input (a file) to finish or release after the commit; None: a camera frame
    frame: ScoredFrame
    flag: bool = False
    alert: bool = False
    img: np.ndarray | None = None  # (H, W, 3) BGR, for the heat-map overlay
    amap: np.ndarray | None = None  # (H, W) anomaly map, 1.0 = threshold
    original: bytes | np.ndarray | None = None  # file bytes as received, or the camera frame
    ext: str = ".png"
    origin: str = ""
    model_version: str = ""
    record: FlagRecord | None = None  # the flagged item, once its images are saved (a held camera frame keeps it)
    held: bool = False  # a camera frame held through a store outage (see `held`), until its commit
    spooled: Path | None = None  # its spool file, when held on disk


class Writer:
    """One writer thread behind a short FIFO queue; `submit` blocks when it is full (back-pressure)."""

    def __init__(
        self,
        store: Store,
        line: str,
        sinks: list[str],
        save_map: bool,
        metrics: Metrics,
        on_alerts: Callable[[], None],
        on_store_error: Callable[[Exception], None],
        depth: int = 16,
        max_batch: int = 16,
        spool: Spool | None = None,
    ) -> None:
        self.store, self.line, self.sinks, self.save_map = store, line, sinks, save_map
        self.metrics, self.on_alerts, self.on_store_error = metrics, on_alerts, on_store_error
        self._q: queue.Queue[Job | None] = queue.Queue(maxsize=depth)
        self.max_batch = max_batch
        self._media_down = False  # the last flagged camera frame's images could not be saved (logged once)
        self._held = HeldFrames(spool)  # camera frames scored while the store was unreachable, oldest first
        self._held_failed = False  # the last commit failed and held camera frames
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

    def held(self) -> int:
        """Camera frames waiting in memory for the store to come back."""
        return len(self._held)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            if self._held_failed and self._take_while_down(time.monotonic() + RETRY_HELD_S):
                break  # stopping
            # camera frames held through a store outage go first, in order, then whatever is queued
            batch: list[Job | None] = list(self._held.take(self.max_batch))
            if not batch:
                batch.append(self._q.get())
            while batch[-1] is not None and len(batch) < self.max_batch and not self._q.empty():
                batch.append(self._q.get_nowait())  # a backlog commits in groups: one transaction each
            if batch[-1] is None:
                batch.pop()
                stopping = True
            if batch:
                self._write(batch)  # type: ignore[arg-type]
        self._last_try()

    def _last_try(self) -> None:
        """At stop: commit what is held while the store answers; what is spooled waits for the next start."""
        while len(self._held):
            before = len(self._held)
            self._write(self._held.take(self.max_batch))
            if len(self._held) >= before:
                break  # still unreachable
        lost, spooled = self._held.in_memory(), len(self._held) - self._held.in_memory()
        if spooled:
            log.info(
                "%d camera frames wait in the spool %s; they are recorded when the watcher starts again and the "
                "store answers",
                spooled,
                self._held.spool.dir,
            )  # type: ignore[union-attr]
        if lost or self._held.dropped:
            log.error(
                "%d camera frames scored while the store was unreachable were not recorded (%d not kept, %d "
                "held in memory at stop)",
                lost + self._held.dropped,
                self._held.dropped,
                lost,
            )

    def _write(self, batch: list[Job]) -> None:
        """Media, then one transaction for the batch, then the file moves; a failed batch is retried one by one."""
        try:
            for job in batch:
                self._save(job)
            ids = self.store.record_frames([(job.frame, job.record) for job in batch])
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
            self._set_aside(batch, hold=_store_unreachable(e))
            return
        except Exception:  # noqa: BLE001 - the writer must outlive any single frame
            log.exception(
                "%s: could not record %d frames; folder inputs will be retried", batch[0].src.name, len(batch)
            )
            self._set_aside(batch, hold=False)
            return
        self._held_failed = False
        for job, flagged_id in zip(batch, ids):
            self._done(job, job.record, flagged_id)

    def _take_while_down(self, until: float) -> bool:
        """While the store is unreachable, keep taking scored frames until `until` (the next retry), so scoring goes
        on: camera frames are held (a flagged one's images saved now), folder inputs released. True on stop."""
        while (left := until - time.monotonic()) > 0:
            try:
                job = self._q.get(timeout=left)
            except queue.Empty:
                return False
            if job is None:
                return True
            try:
                if job.item is None:
                    self._save(job)  # raises no OSError for a camera frame
            except Exception:  # noqa: BLE001 - the writer must outlive any single frame
                log.exception("%s: could not keep frame %s", job.src.name, job.frame.frame_key)
                continue
            self._set_aside([job], hold=True)
        return False

    def _set_aside(self, batch: list[Job], hold: bool) -> None:
        """Frames not recorded: folder inputs stay in their folder (scored again later); camera frames, which exist
        nowhere else, are held and committed first, in order, when the store answers again (those already held stay
        where they are). A row the store refuses (not an outage) is not held: it would block every later frame."""
        cams = [job for job in batch if job.item is None]
        for job in batch:
            if job.item is not None:
                self._release(job)
        if not cams:
            return
        if not hold:
            log.error("%s: %d camera frames not recorded (the store refused them)", cams[0].src.name, len(cams))
            for job in cams:
                if job.held:
                    self._held.done(job)
            return
        self._held_failed = True
        self._held.add([job for job in cams if not job.held])

    def _done(self, job: Job, flag: FlagRecord | None, flagged_id: int | None) -> None:
        self.metrics.scored.labels(job.src.name).inc()
        if flag is not None:
            self.metrics.flagged.labels(job.src.name).inc()
            log.info(
                "%s: flagged %s score %.2f (item %d%s)",
                job.src.name,
                job.origin,
                job.frame.score,
                flagged_id,
                ", alert" if job.alert else ", in cooldown",
                extra={"source": job.src.name, "score": job.frame.score},
            )
            if flag.alerts:
                self.on_alerts()
        try:
            self._finish(job)
        except OSError as e:  # recorded; the next scan finds the file, the ledger says it is done
            log.error("%s: cannot move %s (%s)", job.src.name, job.origin, e)
            self._release(job)

    def _save(self, job: Job) -> None:
        """A flagged frame's images saved (once, before any commit); the job then keeps only its row."""
        if job.flag and job.record is None:
            job.record = self._flag(job)
        job.img = job.amap = job.original = None

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
        payload = alert_payload(
            line=self.line,
            source=f.source,
            frame_key=f.frame_key,
            created_at=f.created_at,
            score=f.score,
            raw_score=f.raw_score,
            threshold=f.threshold,
            model_version=job.model_version,
            image_path=image,
            overlay_path=over,
            width=w,
            height=h,
            origin=job.origin,
        )
        alerts = {name: payload for name in self.sinks} if job.alert else {}
        return FlagRecord(job.model_version, image, over, paths.map if paths else None, w, h, job.origin, alerts)

    def _unsaved(self, job: Job, e: OSError) -> None:
        """A flagged camera frame whose images cannot be written (disk full, media folder gone): count it, say so
        once per outage. Its row and alert go ahead without images (save_media left none half-written)."""
        self.metrics.media_unsaved.labels(job.src.name).inc()
        if not self._media_down:
            log.error(
                "%s: cannot save the images of flagged frames in %s (%s); camera frames are recorded and "
                "alerted without them until saving works again",
                job.src.name,
                self.store.media_dir,
                e,
            )
        self._media_down = True

    def _media_recovered(self) -> None:
        if self._media_down:
            log.info("saving the images of flagged frames in %s works again", self.store.media_dir)
        self._media_down = False

    def _finish(self, job: Job) -> None:
        if job.held:
            self._held.done(job)
        if job.item is not None:
            job.src.finish(job.item)

    @staticmethod
    def _release(job: Job) -> None:
        if job.item is not None:
            job.src.release(job.item)
