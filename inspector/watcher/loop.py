"""The thin watch loop: sources -> scorer -> decision -> writer (store + outbox) -> sinks.

Everything that decides is a pure function (`decisions`, `health`, `disk.is_low`, `outage.replayable_wait`);
everything that touches the outside world is in `inspector.io`, reached through `FrameSource` and `Scorer`
(`protocols`). Each round takes the inputs that are waiting, up to `BATCH` across the sources (round robin,
each source's in order), reads them, scores them in one graph run and decides per source in order; the
writer thread saves, commits and moves them while the next round is scored; the outbox sender delivers
alerts. A round never waits for a batch to fill, so a lone frame is scored at once. A stop request is
honoured between rounds, and the writer commits every frame already scored.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from inspector.config.line import Rules, WatchConfig, source_rules
from inspector.errors import ImageError
from inspector.io.outbox import Sender
from inspector.io.sinks import Sink
from inspector.io.spool import open_spool
from inspector.io.store import ScoredFrame, Store
from inspector.types import FrameResult
from inspector.watcher import health
from inspector.watcher.decisions import AlertState, effective_threshold, is_anomalous, should_alert
from inspector.watcher.disk import DiskWatch
from inspector.watcher.latent import LatentKeeper
from inspector.watcher.ops import Metrics
from inspector.watcher.outage import StoreOutage
from inspector.watcher.protocols import FrameSource, Input, Scorer
from inspector.watcher.sources import open_source
from inspector.watcher.writer import Job, Writer

log = logging.getLogger("inspector.watch")
# Inputs scored in one graph run at most. Measured on 256 px parts (docs/watcher.md): 4-8 frames per run
# give most of the gain over one at a time; more only adds latency to the first frame of a round.
BATCH = 8


@dataclass
class _Source:
    src: FrameSource
    rules: Rules
    state: AlertState = field(default_factory=AlertState)


@dataclass
class _Ready:
    """An input read and waiting for its score."""

    s: _Source
    inp: Input
    img: np.ndarray
    original: bytes | np.ndarray


class _ScoringFailed(Exception):
    """The scorer raised on this input (the message says why)."""


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc)


class Watcher:
    """Runs a line: `run(stop)` until `stop` is set."""

    DISK_CHECK_S = 5.0  # how often the media disk's free space is measured
    STORE_RETRY_S = 2.0  # files released by a store failure are offered again after this

    def __init__(
        self, cfg: WatchConfig, scorer: Scorer, store: Store, sinks: dict[str, Sink], metrics: Metrics | None = None
    ) -> None:
        self.cfg, self.scorer, self.store, self.sinks = cfg, scorer, store, sinks
        self.metrics = metrics or Metrics()
        self.sources = [_Source(open_source(c), source_rules(cfg, c)) for c in cfg.sources]
        self.own = [c.name for c in cfg.sources]  # a shared store may hold other lines' rows
        self.outage = StoreOutage(self.STORE_RETRY_S)
        self.disk = DiskWatch(store.media_dir, cfg.store.min_free_mb, self.metrics.media_free, self.DISK_CHECK_S)
        self.sender = Sender(store, sinks, cfg.outbox.backoff_min_s, cfg.outbox.backoff_max_s, self._on_alert, self.own)
        self.writer = Writer(
            store,
            cfg.line,
            list(sinks),
            cfg.store.save_map,
            self.metrics,
            self.sender.notify,
            self.outage.failed,
            spool=open_spool(cfg, store.media_dir),
        )
        self.latent = LatentKeeper(store, cfg.store.embed_good_every)
        self.wake = threading.Event()
        self.heartbeat = time.monotonic()
        self._due = {"reload": 0.0, "prune": 0.0, "gauges": 0.0}
        self._turn = 0  # the source the next round polls first
        self._dropped: dict[str, int] = {}  # camera frames dropped, not yet added to the store's counters

    def run(self, stop: threading.Event) -> None:
        """Score until `stop` is set, then commit what was scored and stop; pending alerts stay in the outbox."""
        self.metrics.set_model(self.scorer.version)
        self.sender.start()
        self.writer.start()
        self.disk.start(stop)
        for s in self.sources:
            s.src.start(self.wake)
        log.info(
            "watching line %s: %s with model %s",
            self.cfg.line,
            ", ".join(f"{s.src.kind} {s.src.name}" for s in self.sources),
            self.scorer.version,
        )
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
                self._record_dropped()
                pending = str(sum(self.store.pending_count(self.own).values()))
            except SQLAlchemyError:
                pending = "an unknown number of (store unavailable)"
            log.info("stopped line %s; %s alerts still pending", self.cfg.line, pending)

    def step(self, stop: threading.Event | None = None) -> bool:
        """One round: the waiting inputs (up to BATCH) read, scored together, decided, handed to the writer.
        True when something was taken."""
        taken = self._take(stop)
        ready = [r for r in (self._read(s, inp) for s, inp in taken) if r is not None]
        if ready:
            self._score(ready)
        return bool(taken)

    def _take(self, stop: threading.Event | None) -> list[tuple[_Source, Input]]:
        """Round robin over the sources, each source's inputs in their order, starting where the last round stopped
        (with more cameras than BATCH, each is polled in turn); files wait while the store is down (camera frames go
        on: the writer holds them)."""
        wait = self.outage.replayable_wait()
        n = len(self.sources)
        active = [i % n for i in range(self._turn, self._turn + n) if not (wait and self.sources[i % n].src.replayable)]
        taken: list[tuple[_Source, Input]] = []
        while active and len(taken) < BATCH and not (stop is not None and stop.is_set()):
            more = []
            for i in active:
                if len(taken) == BATCH:
                    break
                self._turn = (i + 1) % n
                if (inp := self.sources[i].src.poll()) is not None:
                    taken.append((self.sources[i], inp))
                    more.append(i)
            active = more
        for s in self.sources:
            self._count_dropped(s)
        return taken

    def _read(self, s: _Source, inp: Input) -> _Ready | None:
        """The decoded input, or None when it is done already, unreadable (quarantined) or must wait (store down)."""
        try:
            if inp.maybe_done and (done := self.store.ledger_status(inp.key)) is not None:
                again = s.src.recorded(inp, *done)
                if again is None:
                    return None
                inp = again
            try:
                img, original = s.src.read(inp)
            except ImageError as e:
                if not s.src.defer(inp, e):
                    self._reject(s, inp, e)
                return None
        except SQLAlchemyError as e:
            self.outage.failed(e)
            s.src.release(inp)
            return None
        return _Ready(s, inp, img, original)

    def _score(self, ready: list[_Ready]) -> None:
        """Score the round's inputs (one graph run per threshold in use), then decide each in order."""
        groups: dict[float | None, list[int]] = {}
        for i, r in enumerate(ready):
            groups.setdefault(self._override(r.s), []).append(i)
        results: list[FrameResult | _ScoringFailed] = [_ScoringFailed("not scored")] * len(ready)
        for thr, idx in groups.items():
            t0 = time.perf_counter()
            for i, res in zip(idx, self._score_group([ready[i].img for i in idx], thr), strict=True):
                results[i] = res
            seconds = time.perf_counter() - t0
            for i in idx:
                self.metrics.latency.labels(ready[i].s.src.name).observe(seconds)
        for r, res in zip(ready, results, strict=True):
            try:
                if isinstance(res, _ScoringFailed):
                    self._reject(r.s, r.inp, res)
                else:
                    self._decide(r, res)
            except SQLAlchemyError as e:
                self.outage.failed(e)
                r.s.src.release(r.inp)

    def _override(self, s: _Source) -> float | None:
        """The raw threshold a source sets for itself, or None for the manifest's."""
        if s.rules.threshold is None and s.rules.threshold_scale == 1.0:
            return None
        return effective_threshold(self.scorer.threshold, s.rules)

    def _score_group(self, imgs: list[np.ndarray], thr: float | None) -> list[FrameResult | _ScoringFailed]:
        """Together when there are several; one by one when that fails, so one bad frame fails alone."""
        if len(imgs) > 1:
            try:
                return list(self.scorer.score_batch(imgs, overlay=False, threshold=thr))
            except Exception:  # noqa: BLE001 - find the frame that fails below
                pass
        out: list[FrameResult | _ScoringFailed] = []
        for img in imgs:
            try:
                out.append(self.scorer.score(img, overlay=False, threshold=thr))
            except Exception as e:  # noqa: BLE001 - one bad frame must not stop the line
                out.append(_ScoringFailed(f"scoring failed ({type(e).__name__}: {e})"))
        return out

    def _decide(self, r: _Ready, res: FrameResult) -> None:
        """Decide here; the writer saves, commits and moves the file."""
        s, inp = r.s, r.inp
        thr = effective_threshold(self.scorer.threshold, s.rules)
        now = time.time()
        anomalous = is_anomalous(res.raw_score, thr)
        decision, s.state = should_alert(s.state, anomalous, now, s.rules)
        point = self.latent.point(self.scorer, s.src.name, res.embedding, decision.flag, _utc(now))
        frame = ScoredFrame(
            s.src.name, inp.key, _utc(now), res.raw_score / thr, res.raw_score, thr, anomalous, inp.path, point
        )
        job = Job(
            s.src,
            inp if s.src.replayable else None,
            frame,
            decision.flag,
            decision.alert,
            model_version=self.scorer.version,
            origin=inp.origin,
        )
        if decision.flag:
            job.img, job.amap, job.original, job.ext = r.img, res.anomaly_map, r.original, inp.ext
        self.writer.submit(job)

    def _reject(self, s: _Source, inp: Input, e: Exception) -> None:
        """An input that cannot be scored: counted, in the ledger when replayable (never retried), set aside."""
        self.store.record_error(s.src.name, _utc(time.time()), inp.key if s.src.replayable else None, inp.path, str(e))
        self.metrics.errors.labels(s.src.name).inc()
        s.src.quarantine(inp, str(e))

    def _count_dropped(self, s: _Source) -> None:
        """Counted at once in the metrics, in the store once a second (`_periodic`): a store transaction per round
        on this thread, competing with the writer's, made a camera line that began to drop drop more."""
        n = s.src.take_dropped()
        if n:
            self.metrics.dropped.labels(s.src.name).inc(n)
            self._dropped[s.src.name] = self._dropped.get(s.src.name, 0) + n

    def _record_dropped(self) -> None:
        while self._dropped:
            name, n = self._dropped.popitem()
            try:
                self.store.add_dropped(name, n, _utc(time.time()))
            except SQLAlchemyError:
                self._dropped[name] = self._dropped.get(name, 0) + n  # counted when the store answers
                raise

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
            self._record_dropped()
            for sink, n in {**{k: 0 for k in self.sinks}, **self.store.pending_count(self.own)}.items():
                self.metrics.outbox.labels(sink).set(n)
            if mono >= self._due["prune"]:
                self._due["prune"] = mono + 600
                self.store.prune(
                    _utc(time.time()), self.cfg.store.keep_scores_days, self.cfg.store.max_score_rows, sources=self.own
                )
        except SQLAlchemyError as e:
            self.outage.failed(e)
            return
        self.outage.answered()  # the gauges read the store once a second: it answers again

    def _reload(self) -> None:
        """Hot reload between rounds when `current` moved; a broken new version keeps the old one."""
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
        """For /health: ok while the loop turns, the store answers and the media disk has room."""
        try:
            pending: dict[str, int] | None = self.store.pending_count(self.own)
        except SQLAlchemyError:
            pending = None
        return health.report(
            line=self.cfg.line,
            model_version=self.scorer.version,
            loop_age_s=time.monotonic() - self.heartbeat,
            pending=pending,
            media_free_mb=self.disk.free_mb,
            disk_low=self.disk.low,
            writer_queue=self.writer.depth(),
            held=self.writer.held(),
            sources={s.src.name: s.src.health() for s in self.sources},
        )
