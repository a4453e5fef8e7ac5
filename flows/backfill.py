"""`backfill`: score a folder of past images (optionally only a date range) into a line's store, in batches.

For images the watcher never saw (a camera archive, a week before the line went live) or to see what
the newly promoted model makes of a past period. Each image gets the watcher's idempotency key and a
ledger row, so a batch retried after a lost database connection, or the whole backfill run again,
records every image exactly once. Flagged images keep their heat map for review in the dashboard,
time-stamped with the file's modification time; no alerts are sent for the past.

The batches run on Prefect's Dask task runner: a local Dask cluster by default (one worker thread per
core, each scoring with one ONNX Runtime thread; `processes` for worker processes), or the cluster behind
`scheduler` to spread an archive over many machines. Batches are independent (no two share a file) and
each is one transaction, so they may finish in any order; a batch that fails on a transient error is
retried, one that still fails leaves its images unrecorded for the next run and fails the flow once the
others are done.
Progress is a Prefect progress artifact plus log lines with the counts so far.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from flows.tasks import IO, inspector_logs_to_prefect
from inspector.config.fit import Settings
from inspector.config.line import NAME, LineModel
from inspector.errors import InspectorError

SCHEDULER = r"^(tcp|tls|ucx|inproc)://[^\s]+$"


class BackfillSettings(Settings):
    """Which images to score and under which source name they appear in the store."""

    folder: Path = Field(..., description="Folder of images to score.")
    source: str = Field("backfill", pattern=NAME, description="Source name the results are stored under.")
    since: datetime | None = Field(None, description="Only files modified at or after this time (ISO 8601).")
    until: datetime | None = Field(None, description="Only files modified before this time.")
    recursive: bool = Field(True, description="Also score images in sub-folders.")
    batch_size: int = Field(32, ge=1, le=4096, description="Images per task (one transaction each).")
    engine: Literal["dask", "in_process"] = Field(
        "dask",
        description="dask: batches on a Dask cluster; in_process: one batch after another in the flow's process.",
    )
    scheduler: str | None = Field(
        None,
        pattern=SCHEDULER,
        description="Dask scheduler address (e.g. "
        "tcp://10.0.0.5:8786) of a cluster to spread the archive over; default: a local "
        "cluster on this machine.",
    )
    workers: int = Field(0, ge=0, le=256, description="Workers of the local cluster (0: one per core).")
    processes: bool = Field(
        False,
        description="Local cluster workers as processes (each starts Python, imports Prefect and loads the "
        "model: 9-16 s on 2 busy cores) or as threads of this process (no start-up; ONNX Runtime, decoding "
        "and the database driver release the GIL). Threads measured faster on 2 cores (docs/scale-out.md).",
    )
    threads: int = Field(
        0,
        ge=0,
        le=256,
        description="ONNX Runtime threads per batch (0: the line config's in "
        "process, cores / workers on a local cluster, the line config's on a remote one).",
    )


class BatchResult(BaseModel):
    scored: int = 0
    flagged: int = 0
    already: int = 0  # recorded by an earlier run or try
    unreadable: int = 0


def select_files(s: BackfillSettings) -> list[Path]:
    """Image files of the folder in the date range, oldest first (never processed/ or quarantine/)."""
    from inspector.data.preprocess import IMAGE_SUFFIXES

    folder = Path(s.folder)
    pattern = folder.rglob("*") if s.recursive else folder.glob("*")
    since = s.since.timestamp() if s.since else float("-inf")
    until = s.until.timestamp() if s.until else float("inf")
    picked = []
    for p in pattern:
        rel = p.relative_to(folder).parts
        if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES or rel[0] in ("processed", "quarantine"):
            continue
        if since <= p.stat().st_mtime < until:
            picked.append(p)
    return sorted(picked, key=lambda p: (p.stat().st_mtime_ns, str(p)))


_OPENING = threading.Lock()  # worker threads of one process share its scorer and store: each is opened once


@functools.lru_cache(maxsize=4)
def _scorer(model_json: str):
    """One ONNX session per process (flow process or Dask worker), shared by the batches it runs;
    keyed by the model config as JSON (the config itself holds lists, which do not hash)."""
    from inspector.watcher import load_scorer

    return load_scorer(LineModel.model_validate_json(model_json))


@functools.lru_cache(maxsize=4)
def _store(url: str, media_dir: Path | None):
    """One store (engine and its connection pool) per process: opening one migrates, which a batch need not repeat."""
    from inspector.io.store import Store

    return Store.open(url, media_dir)


@task(**IO, cache_policy=NO_CACHE)
def score_batch(config: Path, s: BackfillSettings, paths: list[Path], threads: int = 0) -> BatchResult:
    """Score and record one batch in one transaction; images already in the ledger are skipped.
    `threads` > 0 overrides the line config's ONNX Runtime threads."""
    from inspector.config.line import load_config
    from inspector.io.store import DuplicateFrame

    cfg = load_config(Path(config))
    scorer, store = _opened(cfg, threads)
    result, todo = _read_batch(store, cfg, s, paths)
    if todo:
        items = _score(scorer, cfg, s, store, todo)
        try:
            store.record_frames(items)
        except DuplicateFrame:  # another try got some of them in: record the rest one by one
            items = [item for item in items if _record_one(store, item)]
            result.already += len(todo) - len(items)
        result.scored += len(items)
        result.flagged += sum(flag is not None for _, flag in items)
    return result


def _opened(cfg, threads: int) -> tuple:
    """(scorer, store) of this process, opened by the first batch under a lock: two worker threads opening one
    store at once would both migrate it (alembic is not thread-safe). Module-level, so that Dask pickles the
    task by value without the lock."""
    model = cfg.model.model_copy(update={"threads": threads}) if threads else cfg.model
    with _OPENING:
        return _scorer(model.model_dump_json()), _store(cfg.store.url, cfg.store.media_dir)


def _record_one(store, item: tuple) -> bool:
    """False when the frame was already recorded."""
    from inspector.io.store import DuplicateFrame

    try:
        store.record_frame(*item)
        return True
    except DuplicateFrame:
        return False


def _read_batch(store, cfg, s: BackfillSettings, paths: list[Path]) -> tuple[BatchResult, list]:
    """(counts so far, [(path, key, image, bytes, mtime)]) for the images not recorded yet; one ledger query."""
    from inspector.data.images import read_image
    from inspector.errors import ImageError
    from inspector.io.sources import file_key

    result, todo = BatchResult(), []
    stats = [(p, p.stat()) for p in paths]
    keys = [file_key(s.source, p.relative_to(s.folder).as_posix(), st.st_size, st.st_mtime_ns) for p, st in stats]
    recorded = store.ledger_statuses(keys)
    for (p, st), key in zip(stats, keys, strict=True):
        if key in recorded:
            result.already += 1
            continue
        when = datetime.fromtimestamp(st.st_mtime, timezone.utc)
        try:
            img, data = read_image(p, 100_000_000, 512 * 2**20)
        except ImageError as e:
            store.record_error(s.source, when, key, str(p), str(e))
            result.unreadable += 1
            continue
        todo.append((p, key, img, data, when))
    return result, todo


def _score(scorer, cfg, s: BackfillSettings, store, todo: list) -> list:
    """[(ScoredFrame, FlagRecord | None)] with the media of flagged images saved first."""
    from inspector.data.preprocess import overlay
    from inspector.io.media import media_paths, save_media
    from inspector.io.store import FlagRecord, ScoredFrame
    from inspector.watcher.decisions import effective_threshold

    thr = effective_threshold(scorer.threshold, cfg.rules)
    results = scorer.score_batch([img for _, _, img, _, _ in todo], threshold=thr)
    items = []
    for (p, key, img, data, when), r in zip(todo, results):
        frame = ScoredFrame(s.source, key, when, r.raw_score / thr, r.raw_score, thr, r.raw_score >= thr, str(p))
        flag = None
        if frame.is_anomaly:
            paths = media_paths(s.source, key, when, p.suffix.lower(), cfg.store.save_map)
            save_media(store.media_dir, paths, data, overlay(img, r.anomaly_map), r.anomaly_map)
            flag = FlagRecord(
                scorer.version,
                paths.image,
                paths.overlay,
                paths.map,
                img.shape[1],
                img.shape[0],
                p.relative_to(s.folder).as_posix(),
            )
        items.append((frame, flag))
    return items


def task_runner(s: BackfillSettings):
    """(Prefect task runner, ONNX Runtime threads per batch) for the settings' engine."""
    if s.engine == "in_process":
        return ThreadPoolTaskRunner(max_workers=1), s.threads
    from prefect_dask import DaskTaskRunner  # only backfills need Dask: imported here, not by every flow

    if s.scheduler:
        return DaskTaskRunner(address=s.scheduler), s.threads
    cores = os.cpu_count() or 1
    workers = s.workers or cores
    cluster = {"n_workers": workers, "threads_per_worker": 1, "processes": s.processes, "dashboard_address": None}
    return DaskTaskRunner(cluster_kwargs=cluster), s.threads or max(1, cores // workers)


def _add(total: BatchResult, r: BatchResult) -> BatchResult:
    return BatchResult(**{k: getattr(total, k) + getattr(r, k) for k in BatchResult.model_fields})


class Progress:
    """The progress artifact and a log line about every 5% of the batches, with the counts so far."""

    def __init__(self, log, images: int, batches: int) -> None:
        self.log, self.images, self.batches, self.done, self.t0 = log, images, batches, 0, time.monotonic()
        self.every = max(1, batches // 20)
        self.artifact = create_progress_artifact(
            0.0, key="backfill-progress", description=f"backfill: {images} images in {batches} batches"
        )

    def step(self, total: BatchResult, failed: int) -> None:
        self.done += 1
        update_progress_artifact(self.artifact, 100.0 * self.done / self.batches)
        if self.done % self.every == 0 or self.done == self.batches:
            seen = total.scored + total.already + total.unreadable
            rate = total.scored / max(time.monotonic() - self.t0, 1e-9)
            self.log.info(
                "backfill: %d/%d batches, %d/%d images (%d scored, %d flagged, %d already, %d unreadable, "
                "%d batches failed), %.1f images/s",
                self.done,
                self.batches,
                seen,
                self.images,
                total.scored,
                total.flagged,
                total.already,
                total.unreadable,
                failed,
                rate,
            )


@flow(name="backfill")
def backfill(config: Path, settings: BackfillSettings) -> BatchResult:
    """Score `settings.folder` with the line's model into the line's store, batch by batch."""
    log = get_run_logger()
    files = select_files(settings)
    batches = [files[i : i + settings.batch_size] for i in range(0, len(files), settings.batch_size)]
    where = (settings.scheduler or "a local cluster") if settings.engine == "dask" else "this process"
    log.info(
        "backfill: %d images in %s to score as source %s, %d batches on %s",
        len(files),
        settings.folder,
        settings.source,
        len(batches),
        where,
    )
    total, failed = BatchResult(), 0
    if batches:
        runner, threads = task_runner(settings)
        with inspector_logs_to_prefect(), runner:
            progress = Progress(log, len(files), len(batches))  # after the cluster started: the rate is the scoring's
            futures = [
                runner.submit(score_batch, {"config": Path(config), "s": settings, "paths": b, "threads": threads})
                for b in batches
            ]
            for future in as_completed(futures):
                try:
                    total = _add(total, future.result())
                except Exception as e:  # retried already if transient; the next run picks its images up
                    failed += 1
                    log.error("backfill: a batch failed (%s: %s)", type(e).__name__, str(e).splitlines()[0][:200])
                progress.step(total, failed)
    log.info(
        "backfill done: %d scored, %d flagged, %d already recorded, %d unreadable",
        total.scored,
        total.flagged,
        total.already,
        total.unreadable,
    )
    if failed:
        raise InspectorError(
            f"backfill: {failed} of {len(batches)} batches failed; run it again to score their images "
            "(recorded images are skipped)"
        )
    return total


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Score a folder of past images into a line's store.")
    ap.add_argument("--config", required=True, help="line config YAML (model and store)")
    ap.add_argument("folder")
    ap.add_argument("--source", default="backfill")
    ap.add_argument("--since", help="ISO date/time, e.g. 2026-11-01")
    ap.add_argument("--until", help="ISO date/time")
    ap.add_argument("--engine", choices=["dask", "in_process"], default="dask")
    ap.add_argument("--scheduler", help="Dask scheduler address, e.g. tcp://10.0.0.5:8786 (default: a local cluster)")
    ap.add_argument("--workers", type=int, default=0, help="local cluster worker processes (default: one per core)")
    a = ap.parse_args()
    r = backfill(
        Path(a.config),
        BackfillSettings(
            folder=Path(a.folder),
            source=a.source,
            since=a.since,
            until=a.until,
            engine=a.engine,
            scheduler=a.scheduler,
            workers=a.workers,
        ),
    )
    print(r.model_dump_json())
    sys.exit(0)
