"""Typed Prefect tasks over `inspector` functions, shared by the training flows.

Retries only on tasks that do IO (the registry on shared storage, the Prefect API), and only for
transient failures: a parity failure or a bad data folder fails the same way every time, so it is
never retried. Compute tasks (fit, calibrate, evaluate) have no retries.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import get_run_context

from inspector.config.fit import CalibrateSettings, FitSettings

EVALUATIONS = "evaluations"  # <model>/evaluations/<version>/: kept per version (staging is overwritten)
REFERENCE = "reference.json"


def transient(exc: BaseException | None) -> bool:
    """An OS or database connection error anywhere in the chain (shares and servers come back)."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, (OSError, OperationalError, InterfaceError)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def retry_on_io(_task: Any, _run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry transient IO failures only."""
    return transient(state.data if isinstance(state.data, BaseException) else None)


IO = dict(retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_on_io)


class _RunIdFilter(logging.Filter):
    """Stamp records from any thread (watcher threads have no Prefect context) with the flow run id."""

    def __init__(self, flow_run_id: str) -> None:
        super().__init__()
        self.flow_run_id = flow_run_id

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "flow_run_id", None):
            record.flow_run_id = self.flow_run_id
        return True


@contextlib.contextmanager
def inspector_logs_to_prefect() -> Iterator[None]:
    """Send the `inspector` loggers' records to the flow run's log in the Prefect UI, for the run's duration."""
    from prefect.logging.handlers import APILogHandler

    ctx = get_run_context()
    flow_run = getattr(ctx, "flow_run", None)
    if flow_run is None:
        yield
        return
    handler = APILogHandler()
    handler.setLevel(logging.INFO)
    handler.addFilter(_RunIdFilter(str(flow_run.id)))
    logger = logging.getLogger("inspector")
    old_level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@task
def fit_model(data: Path, model: Path, settings: FitSettings) -> dict:
    """Fit on the good images of `data`; returns what was fitted on."""
    from inspector.pipeline.fit import fit

    r = fit(Path(data), Path(model), settings, show=False)
    get_run_logger().info("fitted %s on %d good images (%d held out) in %.0f s", model, r.n_fit, r.n_holdout, r.seconds)
    if r.tiling:
        get_run_logger().info("input: %s", r.tiling["reason"])  # tiled or whole images, and why
    return {
        "fit_images": r.n_fit,
        "holdout_images": r.n_holdout,
        "left_out_images": r.n_left_out,  # fit images calibrated on too (inspector.pipeline.crossfit)
        "skipped": r.skipped,
        "seconds": round(r.seconds, 1),
        "tiling": r.tiling,
    }


@task
def calibrate_model(model: Path, settings: CalibrateSettings) -> dict:
    from inspector.pipeline.calibrate import calibrate_model as calibrate

    cal = calibrate(Path(model), settings)
    get_run_logger().info(cal["meaning"])
    return cal


@task
def evaluate_model(model: Path, data: Path) -> dict:
    """Metrics of the torch model on the labelled test images, and heat-map overlays in staging/evaluation/."""
    from inspector.pipeline.evaluate import evaluate_model as evaluate

    return evaluate(Path(model), Path(data), show=False)


@task(**IO)
def export_version(model: Path) -> str:
    """Export staging/ as the next version; returns its name (e.g. 'v3')."""
    from inspector.pipeline.export import export_model

    return export_model(Path(model)).name


@task(**IO)
def current_version(model: Path) -> str | None:
    from inspector.runtime.registry import current_version as current

    return current(Path(model))


@task(**IO)
def promote_version(model: Path, version: str, reason: str) -> None:
    from inspector.runtime.registry import promote

    promote(Path(model), version, reason=reason)
    get_run_logger().info("promoted %s: `current` -> %s (%s)", model, version, reason)


@task
def measure_version(version_dir: Path, data: Path) -> dict:
    """Score the labelled test images with an exported version exactly as the line will (ONNX Runtime).

    Candidate and current are measured by this same code on the same images, so the gate compares like
    with like. Counts of good images and false alarms at the version's own threshold go with the metrics.
    """
    import cv2

    from inspector.data.datasets import discover, load_mask
    from inspector.data.images import load_image
    from inspector.pipeline.evaluate import PIXEL_GRID, Item, image_metrics, pixel_metrics
    from inspector.runtime import Scorer

    scorer = Scorer.load(Path(version_dir), providers=["cpu"])
    samples = discover(Path(data)).test
    items, preds, masks = [], [], []
    with_masks = any(s.mask for s in samples)
    for s in samples:
        img = load_image(s.path)
        r = scorer.score(img)
        items.append(Item(s.path, s.label, r.score, img, r.anomaly_map))
        if with_masks:
            preds.append(cv2.resize(r.anomaly_map, PIXEL_GRID[::-1], interpolation=cv2.INTER_LINEAR))
            masks.append(load_mask(s.mask, PIXEL_GRID))
    metrics = image_metrics(items, scorer.fit_image_sizes) | pixel_metrics(preds, masks, items)
    good = [i for i in items if i.label == 0]
    return metrics | {
        "version": scorer.version,
        "good_images": len(good),
        "false_alarms": sum(i.score >= 1.0 for i in good),
    }


@task(**IO)
def keep_evaluation(model: Path, version: str) -> list[Path]:
    """Keep what the next fit would overwrite in staging/, under evaluations/<version>/: the heat-map
    overlays (returned) and the held-out good scores, the reference the daily report measures drift against."""
    from inspector.runtime.manifest import read_manifest

    src, dst = Path(model) / "staging", Path(model) / EVALUATIONS / version
    dst.mkdir(parents=True, exist_ok=True)
    fit_info = json.loads((src / "fit.json").read_text())
    threshold = read_manifest(Path(model) / version).threshold
    reference = {
        "version": version,
        "threshold": threshold,
        "holdout_scores": [h["score"] / threshold for h in good_images(fit_info)],
    }
    (dst / REFERENCE).write_text(json.dumps(reference))
    kept = []
    for png in sorted((src / "evaluation").glob("*.png")):
        shutil.copy2(png, dst / png.name)
        kept.append((dst / png.name).resolve())
    return kept


def reference_scores(model: Path, version: str) -> list[float] | None:
    """Held-out good scores (1.0 = threshold) of a version: kept by the train flow, else from staging/fit.json
    when staging is still the fit that version was exported from."""
    from inspector.runtime.manifest import read_manifest

    kept = Path(model) / EVALUATIONS / version / REFERENCE
    if kept.is_file():
        return json.loads(kept.read_text())["holdout_scores"]
    fit_json = Path(model) / "staging" / "fit.json"
    if not fit_json.is_file():
        return None
    m = read_manifest(Path(model) / version)
    fit_info = json.loads(fit_json.read_text())
    training = m.data.get("training", {})
    if (fit_info.get("fingerprint"), fit_info.get("created")) != (training.get("fingerprint"), training.get("created")):
        return None
    return [h["score"] / m.threshold for h in good_images(fit_info)]


def good_images(fit_info: dict) -> list[dict]:
    """fit.json's good images scored by a model that never saw them: the hold-out, and the fit images' cross-fit
    scores where fit made them (inspector.pipeline.crossfit), as calibration counts them."""
    return fit_info.get("holdout", []) + fit_info.get("left_out", [])


@task(**IO)
def publish_artifacts(key: str, markdown: str, table: list[dict], description: str) -> None:
    """One markdown report and one metrics table under stable keys, so the UI shows their history."""
    create_markdown_artifact(markdown, key=key, description=description)
    create_table_artifact(table, key=f"{key}-metrics", description=description)


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    text = "-".join(parts).lower()
    return "".join(c if c.isalnum() and c.isascii() else "-" for c in text).strip("-")[:100]
