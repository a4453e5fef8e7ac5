"""`backfill`: score a folder of past images (optionally only a date range) into a line's store, in batches.

For images the watcher never saw (a camera archive, a week before the line went live) or to see what
the newly promoted model makes of a past period. Each image gets the watcher's idempotency key and a
ledger row, so a batch retried after a lost database connection, or the whole backfill run again,
records every image exactly once. Flagged images keep their heat map for review in the dashboard,
time-stamped with the file's modification time; no alerts are sent for the past.
"""

from __future__ import annotations

import functools
import sys
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from flows.tasks import IO, inspector_logs_to_prefect
from inspector.config.fit import Settings
from inspector.config.line import NAME


class BackfillSettings(Settings):
    """Which images to score and under which source name they appear in the store."""

    folder: Path = Field(..., description="Folder of images to score.")
    source: str = Field("backfill", pattern=NAME, description="Source name the results are stored under.")
    since: datetime | None = Field(None, description="Only files modified at or after this time (ISO 8601).")
    until: datetime | None = Field(None, description="Only files modified before this time.")
    recursive: bool = Field(True, description="Also score images in sub-folders.")
    batch_size: int = Field(32, ge=1, le=4096, description="Images per task (one transaction each).")


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


@functools.lru_cache(maxsize=4)
def _scorer(model: str, providers: tuple[str, ...] | None, threads: int):
    """One ONNX session per process, shared by the batches."""
    from inspector.watcher import load_scorer
    from inspector.config.line import LineModel

    return load_scorer(LineModel(path=Path(model), providers=list(providers) if providers else None, threads=threads))


@task(**IO, cache_policy=NO_CACHE)
def score_batch(config: Path, s: BackfillSettings, paths: list[Path]) -> BatchResult:
    """Score and record one batch in one transaction; images already in the ledger are skipped."""
    from inspector.io.store import DuplicateFrame, Store
    from inspector.config.line import load_config

    cfg = load_config(Path(config))
    scorer = _scorer(str(cfg.model.path), tuple(cfg.model.providers or ()) or None, cfg.model.threads)
    store = Store.open(cfg.store.url, cfg.store.media_dir)
    try:
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
    finally:
        store.close()


def _record_one(store, item: tuple) -> bool:
    """False when the frame was already recorded."""
    from inspector.io.store import DuplicateFrame

    try:
        store.record_frame(*item)
        return True
    except DuplicateFrame:
        return False


def _read_batch(store, cfg, s: BackfillSettings, paths: list[Path]) -> tuple[BatchResult, list]:
    """(counts so far, [(path, key, image, bytes, mtime)]) for the images not recorded yet."""
    from inspector.errors import ImageError
    from inspector.data.images import read_image
    from inspector.io.sources import file_key

    result, todo = BatchResult(), []
    for p in paths:
        st = p.stat()
        key = file_key(s.source, p.relative_to(s.folder).as_posix(), st.st_size, st.st_mtime_ns)
        if store.ledger_status(key) is not None:
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
    from inspector.io.media import media_paths, save_media
    from inspector.io.store import FlagRecord, ScoredFrame
    from inspector.data.preprocess import overlay
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
            flag = FlagRecord(scorer.version, paths.image, paths.overlay, paths.map, img.shape[1], img.shape[0],
                              p.relative_to(s.folder).as_posix())
        items.append((frame, flag))
    return items


@flow(name="backfill")
def backfill(config: Path, settings: BackfillSettings) -> BatchResult:
    """Score `settings.folder` with the line's model into the line's store, batch by batch."""
    log = get_run_logger()
    files = select_files(settings)
    log.info("backfill: %d images in %s to score as source %s", len(files), settings.folder, settings.source)
    total = BatchResult()
    with inspector_logs_to_prefect():
        for i in range(0, len(files), settings.batch_size):
            r = score_batch(Path(config), settings, files[i:i + settings.batch_size])
            total = BatchResult(**{k: getattr(total, k) + getattr(r, k) for k in BatchResult.model_fields})
    log.info("backfill done: %d scored, %d flagged, %d already recorded, %d unreadable",
             total.scored, total.flagged, total.already, total.unreadable)
    return total


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Score a folder of past images into a line's store.")
    ap.add_argument("--config", required=True, help="line config YAML (model and store)")
    ap.add_argument("folder")
    ap.add_argument("--source", default="backfill")
    ap.add_argument("--since", help="ISO date/time, e.g. 2026-11-01")
    ap.add_argument("--until", help="ISO date/time")
    a = ap.parse_args()
    r = backfill(Path(a.config), BackfillSettings(folder=Path(a.folder), source=a.source, since=a.since, until=a.until))
    print(r.model_dump_json())
    sys.exit(0)
