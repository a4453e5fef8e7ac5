"""Choose the alarm threshold and say in plain words what it means.

From good images alone: the held-out good images scored at fit time give a threshold for a target
false-alarm rate, with its uncertainty. With labelled defects (DATA/test/<defect>) the F1-optimal
threshold and precision/recall are reported too, and `strategy=f1` uses it.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np

from inspector.config.fit import CalibrateSettings
from inspector.errors import InspectorError
from inspector.files import atomic_write_json
from inspector.pipeline.checkpoint import CALIBRATION_FILE, FIT_FILE, check_model_dir, read_json, staging
from inspector.scoring.metrics import f1_optimal, fpr_estimate, fpr_threshold, pr_at, pr_curve

log = logging.getLogger(__name__)


def labelled_scores(model_dir: Path, data: Path | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Raw scores and labels of the labelled test images, or None when there are no defects."""
    from inspector.data.datasets import LoadReport, discover
    from inspector.pipeline.checkpoint import load_model
    from inspector.pipeline.infer import score_paths

    fit_info = read_json(staging(model_dir) / FIT_FILE, "refit the model")
    root = Path(data or fit_info["data"])
    if not root.exists():
        return None
    ds = discover(root)
    if not ds.has_defects:
        return None
    net, pre, _ = load_model(model_dir)
    labels = {s.path: s.label for s in ds.test}
    scored = list(score_paths(net, pre, [s.path for s in ds.test], LoadReport()))
    return np.array([r.score for r in scored]), np.array([labels[r.path] for r in scored])


def calibrate_model(model_dir: Path, s: CalibrateSettings, data: Path | None = None) -> dict:
    check_model_dir(model_dir)
    fit_info = read_json(staging(model_dir) / FIT_FILE, "refit the model")
    held = [h["score"] for h in fit_info["holdout"]]
    left = [h["score"] for h in fit_info.get("left_out", [])]  # fit images scored by refits without them (`crossfit`)
    good = np.array(held + left)
    if len(good) < s.min_holdout:
        raise InspectorError(
            f"only {len(good)} held-out good images: calibration needs at least {s.min_holdout}; "
            f"fit again with at least {int(np.ceil(s.min_holdout / 0.2))} good images"
        )
    fpr = fpr_threshold(good, s.fpr)
    cal: dict = {
        "strategy": s.strategy,
        "target_fpr": s.fpr,
        "holdout_images": len(held),
        "holdout_policy": fit_info.get("holdout_policy", "random"),
        "fpr": fpr.to_dict(),
    }
    if left:
        cal["left_out_images"] = len(left)
        cal["left_out_method"] = fit_info.get("left_out_method") or "cross-fit"
    tiles = (fit_info.get("tiling") or {}).get("tiles") or [1, 1]
    if tiles[0] * tiles[1] > 1:  # the image score is the highest of its tiles' (fit.json `tiling`)
        cal["tiles_per_image"] = tiles[0] * tiles[1]
    threshold = fpr.threshold
    labelled = labelled_scores(model_dir, data)
    if labelled is not None:
        scores, labels = labelled
        best = f1_optimal(scores, labels)
        cal["labelled"] = {
            "images": len(labels),
            "defects": int(labels.sum()),
            "at_fpr_threshold": pr_at(scores, labels, fpr.threshold),
            "f1_optimal": best,
            "curve": pr_curve(scores, labels),
        }
        if s.strategy == "f1":
            threshold = best["threshold"]
            fpr = fpr_estimate(good, threshold, s.fpr)
    elif s.strategy == "f1":
        raise InspectorError("strategy f1 needs labelled defect images (DATA/test/<defect>/); none found")
    cal.update(
        threshold=threshold,
        expected_fpr=fpr.expected_fpr,
        fpr_interval_90=list(fpr.interval_90),
        threshold_rule=fpr.rule,
    )
    cal["meaning"] = meaning(cal, fpr)
    cal["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_json(staging(model_dir) / CALIBRATION_FILE, cal)
    return cal


def meaning(cal: dict, fpr) -> str:
    """The threshold in plain words, for people who will be woken by its alarms."""
    lo, hi = fpr.interval_90
    text = (
        f"A part is flagged when its score reaches 1.0 (raw {cal['threshold']:.4g}); scores read as multiples "
        f"of the threshold. "
    )
    which = "the last by name" if cal.get("holdout_policy") == "last" else "drawn at random"
    goods = f"{fpr.holdout} good images never used to fit ({which})"
    if cal.get("left_out_images"):
        held = fpr.holdout - cal["left_out_images"]
        how = "each scored by a model refitted without it (cross-fit: fitted on fewer images, a refit errs high)"
        goods = f"{fpr.holdout} good images: {held} never used to fit ({which}) and {cal['left_out_images']} fit "
        goods += f"images, {how}"
    if cal["strategy"] == "fpr":
        text += f"Chosen from {goods}, for a {fpr.target_fpr:.1%} false-alarm target: "
    else:
        text += f"Chosen for the best F1 on labelled images; on {goods} it would give: "
    text += (
        f"expect about {fpr.expected_fpr:.1%} of good parts flagged (90% interval {lo:.2%} to {hi:.2%} with this "
        f"many images)."
    )
    if not fpr.attainable:
        need = math.ceil(1 / fpr.target_fpr - 1)
        text += (
            f" {fpr.holdout} good images cannot promise {fpr.target_fpr:.1%} without assumptions: the threshold "
            f"is above every one of them, which promises at most {fpr.expected_fpr:.1%}"
        )
        if fpr.rule == "max+lognormal":
            text += f", and {fpr.target_fpr:.1%} if good scores are log-normal (a t prediction bound on their logs)"
        if cal.get("left_out_images"):  # every good image counts, held out or left out
            text += f"; {need} good images promise it outright."
        else:
            text += f"; {need} held-out good images (about {math.ceil(need / 0.2)} good images) promise it outright."
    if "tiles_per_image" in cal:
        text += (
            f" Each image is scored as {cal['tiles_per_image']} tiles (its score: the highest tile); the promise "
            f"counts held-out images, not tiles, since tiles of one image are not independent."
        )
    if "labelled" in cal:
        at = cal["labelled"]["at_fpr_threshold"]
        text += (
            f" On {cal['labelled']['images']} labelled test images the {fpr.target_fpr:.1%} threshold catches "
            f"{at['recall']:.0%} of defects at {at['precision']:.0%} precision."
        )
    return text
