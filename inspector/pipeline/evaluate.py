"""Evaluate a calibrated model on labelled test images: metrics, heat-map overlays, score histogram.

Metric implementations are torchmetrics' (AUROC) and anomalib's (AUPRO), not our own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from inspector.data.datasets import MAX_FORMATS, LoadReport, discover, load_mask, name_order
from inspector.data.images import image_size
from inspector.data.preprocess import overlay
from inspector.errors import InspectorError
from inspector.files import atomic_write_json
from inspector.pipeline.checkpoint import CALIBRATION_FILE, FIT_FILE, check_model_dir, load_model, read_json, staging
from inspector.pipeline.infer import score_paths
from inspector.scoring.metrics import fpr_by_order, late_alarm_p, pr_at

log = logging.getLogger(__name__)
PIXEL_GRID = (256, 256)  # maps and masks are compared on a common grid (images differ in size)
EVAL_DIR = "evaluation"
LATE_ALARM_P = 0.01  # format_table names a late pile-up of false alarms below this p-value


@dataclass
class Item:
    path: Path
    label: int
    score: float  # normalized: 1.0 = threshold
    image: np.ndarray
    amap: np.ndarray  # normalized, network input size


def evaluate_model(model_dir: Path, data: Path | None = None, show: bool = True) -> dict:
    check_model_dir(model_dir)  # a wrong path says so, not "run calibrate first"
    cal = read_json(staging(model_dir) / CALIBRATION_FILE, "run `inspector calibrate` first")
    fit_info = read_json(staging(model_dir) / FIT_FILE, "refit the model")
    ds = discover(Path(data or fit_info["data"]))
    if not ds.test:
        raise InspectorError(f"{ds.root} has no test/ images to evaluate on")
    net, pre, _ = load_model(model_dir)
    thr = float(cal["threshold"])
    t0 = time.time()
    labels = {s.path: s for s in ds.test}
    items, preds, masks = [], [], []
    has_masks = any(x.mask for x in ds.test)
    for r in score_paths(net, pre, [s.path for s in ds.test], LoadReport()):
        s = labels[r.path]
        item = Item(r.path, s.label, r.score / thr, r.image, r.amap / thr)
        items.append(item)
        if has_masks:
            preds.append(cv2.resize(item.amap, PIXEL_GRID[::-1], interpolation=cv2.INTER_LINEAR))
            masks.append(load_mask(s.mask, PIXEL_GRID))
    ms = (time.time() - t0) / max(len(items), 1) * 1000
    metrics = (
        image_metrics(items, fit_info.get("image_sizes")) | pixel_metrics(preds, masks, items) | {"ms_per_image": ms}
    )
    out = staging(model_dir) / EVAL_DIR
    out.mkdir(exist_ok=True)
    save_examples(items, out)
    save_histogram(items, out / "histogram.png")
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def auroc(scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """torchmetrics' AUROC on scores rescaled into [0, 1] (it applies a sigmoid to anything outside,
    which saturates large scores into ties)."""
    from torchmetrics.functional.classification import binary_auroc

    s = torch.as_tensor(scores, dtype=torch.float64)
    s = (s - s.min()) / (s.max() - s.min()).clamp_min(1e-12)
    return float(binary_auroc(s, torch.as_tensor(labels).long()))


def image_metrics(items: list[Item], fitted: dict[str, int] | None = None) -> dict:
    """Image-level metrics; `fitted`: the fit images' formats ("WxH" -> count), to mark formats never fitted."""
    scores = np.array([i.score for i in items])
    labels = np.array([i.label for i in items])
    good = scores[labels == 0]
    res = {
        "images": len(items),
        "defects": int(labels.sum()),
        "fpr_at_threshold": float((good >= 1.0).mean()) if len(good) else None,
    }
    good_items = [i for i in items if i.label == 0]
    by_size = fpr_by_image_size(good_items, fitted)
    # a few camera formats (not sizes varying per part), or one the fit never saw: which one alarms?
    if len(by_size) <= MAX_FORMATS and (len(by_size) > 1 or any(not g.get("fitted", True) for g in by_size.values())):
        res["fpr_by_image_size"] = by_size
    by_order = fpr_by_name_order([i.path for i in good_items], [i.score for i in good_items])
    if by_order is not None:  # alarms rising along timestamped names: the parts changed after the fit
        res["fpr_by_name_order"], res["late_alarm_p"] = by_order, late_alarm_p(by_order)
    if labels.min() != labels.max():
        res["image_auroc"] = auroc(scores, labels)
        at = pr_at(scores, labels, 1.0)
        res.update(f1_at_threshold=at["f1"], precision_at_threshold=at["precision"], recall_at_threshold=at["recall"])
    return res


def fpr_by_image_size(good: list[Item], fitted: dict[str, int] | None = None) -> dict[str, dict]:
    """False-alarm rate of good images per image size ("WxH"): a format the fit never saw shows up here
    (marked `fitted: false` when the fit's formats are known)."""
    groups: dict[str, list[float]] = {}
    for it in good:
        groups.setdefault(image_size(it.image), []).append(it.score)
    out = {k: {"images": len(v), "fpr": float(np.mean(np.asarray(v) >= 1.0))} for k, v in sorted(groups.items())}
    if fitted:
        for k, g in out.items():
            g["fitted"] = k in fitted
    return out


def fpr_by_name_order(paths: list[Path], scores: list[float]) -> list[dict] | None:
    """`fpr_by_order` of good images (scores normalized, 1.0 = threshold) sorted as the hold-out sorts them: digit
    runs read as numbers, so timestamped or counted names run oldest to newest."""
    order = sorted(range(len(paths)), key=lambda k: name_order(paths[k]))
    return fpr_by_order([paths[k].name for k in order], np.asarray(scores, np.float64)[order])


def pixel_metrics(preds: list[np.ndarray], masks: list[np.ndarray], items: list[Item]) -> dict:
    if not masks or not any(m.any() for m in masks):
        return {}
    from anomalib.metrics.aupro import _AUPRO

    p = torch.from_numpy(np.stack(preds)).float()  # (N, H, W)
    t = torch.from_numpy(np.stack(masks)).long()
    aupro = _AUPRO(fpr_limit=0.3)
    aupro.update(p, t)
    return {"pixel_auroc": auroc(p.flatten(), t.flatten()), "aupro": float(aupro.compute())}


def _pick(items: list[Item]) -> dict[str, Item]:
    good = sorted((i for i in items if i.label == 0), key=lambda i: i.score)
    bad = sorted((i for i in items if i.label == 1), key=lambda i: i.score)
    picks: dict[str, Item] = {}
    if bad:
        picks |= {
            "best_defect": bad[-1],
            "worst_defect": bad[0],
            "borderline_defect": min(bad, key=lambda i: abs(i.score - 1)),
        }
    if good:
        picks |= {
            "worst_good": good[-1],
            "best_good": good[0],
            "borderline_good": min(good, key=lambda i: abs(i.score - 1)),
        }
    return picks


def save_examples(items: list[Item], out: Path) -> None:
    for name, it in _pick(items).items():
        img = overlay(it.image, it.amap)
        label = f"{it.path.name}  {it.score:.2f}x threshold"
        cv2.putText(img, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
        cv2.imwrite(str(out / f"{name}.png"), np.hstack([it.image, img]))


def save_histogram(items: list[Item], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = np.array([i.score for i in items])
    labels = np.array([i.label for i in items])
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    bins = np.linspace(0, max(2.0, np.quantile(scores, 0.99)), 50)
    ax.hist(scores[labels == 0], bins, alpha=0.6, label="good")
    if labels.any():
        ax.hist(scores[labels == 1], bins, alpha=0.6, label="defect")
    ax.axvline(1.0, color="k", ls="--", label="threshold")
    ax.set_xlabel("score (multiple of threshold)")
    ax.set_ylabel("images")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_table(m: dict) -> str:
    rows = [
        (k, m[k])
        for k in (
            "images",
            "defects",
            "image_auroc",
            "pixel_auroc",
            "aupro",
            "f1_at_threshold",
            "precision_at_threshold",
            "recall_at_threshold",
            "fpr_at_threshold",
            "ms_per_image",
        )
        if k in m
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}" for k, v in rows]
    for size, g in m.get("fpr_by_image_size", {}).items():
        never = "; no fit image had this size" if g.get("fitted") is False else ""
        lines.append(f"{'  fpr ' + size:<{width}}  {g['fpr']:.4f}  ({g['images']} good images of this size{never})")
    runs = m.get("fpr_by_name_order", [])
    for n, g in enumerate(runs, 1):
        lines.append(
            f"{f'  fpr names {n}/{len(runs)}':<{width}}  {g['fpr']:.4f}  ({g['images']} good images "
            f"{g['first']} .. {g['last']}, median score {g['median_score']:.2f}x)"
        )
    if runs and m["late_alarm_p"] < LATE_ALARM_P:
        early, n_early = sum(g["flagged"] for g in runs[:-1]), sum(g["images"] for g in runs[:-1])
        lines.append(
            f"false alarms pile up in the last quarter by name ({runs[-1]['flagged']}/{runs[-1]['images']} against "
            f"{early}/{n_early} before, one-sided Fisher p = {m['late_alarm_p']:.1g}): if the names carry the capture "
            "time, the parts changed after the fit (wear, soiling, a new setting); refit on recent good parts"
        )
    return "\n".join(lines)
