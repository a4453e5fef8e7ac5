"""`retrain` (scheduled): train again with the false alarms people reviewed in the dashboard as good images.

The dashboard copies the original image of every item reviewed as a false alarm into a retrain folder
(`retrain/good/` beside the store unless `dashboard.retrain_dir` says otherwise) and removes the copy if
the review is undone. This flow trains on the original good images plus everything in that folder,
evaluates on the original labelled test images, and goes through the same gate as `train`. It records
which copies it used in `<model>/retrain.json`; when the folder holds nothing new since then, it skips
with one log line and costs nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from pydantic import BaseModel

from flows.tasks import IO, inspector_logs_to_prefect
from flows.train import TrainResult, train_and_gate
from inspector.config.fit import CalibrateSettings, FitSettings
from inspector.files import atomic_write_json
from inspector.scoring.gate import GateSettings

STATE_FILE = "retrain.json"
DATA_DIR = "retrain-data"  # <model>/retrain-data/: links to the original images plus the reviewed ones
# Sorts before camera file names (train reads digit runs as numbers): the default hold-out, the last names, stays
# the newest original images, and every reviewed false alarm is fitted.
PREFIX = "0-reviewed-"


class RetrainResult(BaseModel):
    status: str  # "skipped" | "trained"
    added: list[str]
    removed: list[str]
    train: TrainResult | None = None


@task(**IO)
def reviewed_false_alarms(retrain_dir: Path) -> dict[str, int]:
    """Image name -> size of every reviewed false alarm copied into the retrain folder."""
    from inspector.data.datasets import list_images

    folder = Path(retrain_dir)
    return {p.name: p.stat().st_size for p in list_images(folder)} if folder.is_dir() else {}


@task(**IO)
def last_used(model: Path) -> dict[str, int]:
    path = Path(model) / STATE_FILE
    return json.loads(path.read_text()).get("files", {}) if path.is_file() else {}


@task(**IO)
def assemble_data(data: Path, retrain_dir: Path, names: list[str], model: Path) -> Path:
    """A dataset folder of links: the original train/good plus the reviewed images, the original test set."""
    from inspector.data.datasets import discover

    ds = discover(Path(data))
    root = Path(model) / DATA_DIR
    tmp = root.with_name(f".{DATA_DIR}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    good = tmp / "train" / "good"
    good.mkdir(parents=True)
    for p in ds.train:
        _link(p, good / p.name)
    for name in names:
        _link(Path(retrain_dir) / name, good / f"{PREFIX}{name}")
    for sub in ("test", "ground_truth"):
        if (Path(data) / sub).is_dir():
            _link(Path(data) / sub, tmp / sub)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    return root


@task(**IO)
def record_used(model: Path, files: dict[str, int], version: str, promoted: bool) -> None:
    state = {"files": files, "version": version, "promoted": promoted, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(Path(model) / STATE_FILE, state)


def _link(src: Path, dst: Path) -> None:
    """A symlink (cheap, and the fit fingerprint still reads the bytes); a copy where links are not allowed."""
    try:
        os.symlink(src.resolve(), dst, target_is_directory=src.is_dir())
    except OSError:
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)


@flow(name="retrain")
def retrain(
    data: Path,
    model: Path,
    retrain_dir: Path,
    fit: FitSettings = FitSettings(),
    calibrate: CalibrateSettings = CalibrateSettings(),
    gate: GateSettings = GateSettings(),
) -> RetrainResult:
    """Retrain `model` on `data` plus the reviewed false alarms in `retrain_dir`, if any arrived since last time."""
    log = get_run_logger()
    model, data, retrain_dir = Path(model), Path(data), Path(retrain_dir)
    files, used = reviewed_false_alarms(retrain_dir), last_used(model)
    added = sorted(set(files) - set(used))
    removed = sorted(set(used) - set(files))
    if not added and not removed:
        log.info(
            "retrain skipped: no new reviewed false alarms in %s since the last retrain (%d in use)",
            retrain_dir,
            len(files),
        )
        return RetrainResult(status="skipped", added=[], removed=[])
    log.info(
        "retraining %s with %d reviewed false alarms (%d new, %d withdrawn)",
        model,
        len(files),
        len(added),
        len(removed),
    )
    with inspector_logs_to_prefect():
        assembled = assemble_data(data, retrain_dir, sorted(files), model)
        result = train_and_gate(assembled, model, fit, calibrate, gate, eval_data=data, why="retrain")
    record_used(model, files, result.version, result.promoted)
    return RetrainResult(status="trained", added=added, removed=removed, train=result)


if __name__ == "__main__":
    import argparse
    import sys

    ap = argparse.ArgumentParser(description="Run the retrain flow once (ephemeral Prefect API, no server needed).")
    ap.add_argument("data", type=Path, help="the original data set (train/good, test/...)")
    ap.add_argument("model", type=Path, help="model folder (the registry)")
    ap.add_argument("retrain_dir", type=Path, help="folder the dashboard copies reviewed false alarms into")
    a = ap.parse_args()
    r = retrain(a.data, a.model, a.retrain_dir)
    print(r.status if r.train is None else f"{r.train.version}: {'promoted' if r.train.promoted else 'not promoted'}")
    sys.exit(0)
