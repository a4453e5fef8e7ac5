"""Threshold choice and detection metrics: plain functions on score arrays (no torch, no IO)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class FprThreshold:
    threshold: float
    holdout: int  # good images it was chosen from
    above: int  # held-out good images at or above it
    target_fpr: float
    expected_fpr: float  # mean false-alarm rate on new good images
    interval_90: tuple[float, float]
    attainable: bool  # False when too few images to resolve the target

    def to_dict(self) -> dict:
        return asdict(self)


def fpr_threshold(good_scores: np.ndarray, target_fpr: float) -> FprThreshold:
    """Threshold at the k-th largest held-out good score.

    With n held-out scores and the threshold at the k-th largest, a new good image scores at or above
    it with probability k/(n+1); that rate is Beta(k, n+1-k) distributed over draws of the hold-out
    set, which gives the interval. k is the largest with k/(n+1) <= target.
    """
    from scipy.stats import beta

    s = np.sort(np.asarray(good_scores, np.float64))[::-1]
    n = len(s)
    k = math.floor(target_fpr * (n + 1) + 1e-9)
    attainable = k >= 1
    k = max(k, 1)
    thr = float(s[k - 1])
    if not attainable:  # above every held-out score: a margin of the score spread
        thr = float(s[0] + 0.05 * (s[0] - np.median(s)))
        k = 1
    lo, hi = beta.ppf([0.05, 0.95], k, n + 1 - k)
    return FprThreshold(thr, n, int((s >= thr).sum()), target_fpr, k / (n + 1), (float(lo), float(hi)), attainable)


def pr_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Precision, recall, F1 and false-alarm rate when flagging scores >= threshold."""
    scores, labels = np.asarray(scores), np.asarray(labels).astype(bool)
    flag = scores >= threshold
    tp, fp = int((flag & labels).sum()), int((flag & ~labels).sum())
    fn, tn = int((~flag & labels).sum()), int((~flag & ~labels).sum())
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    fpr = fp / (fp + tn) if fp + tn else 0.0
    return {"threshold": float(threshold), "precision": precision, "recall": recall, "f1": f1, "fpr": fpr,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def f1_optimal(scores: np.ndarray, labels: np.ndarray) -> dict:
    """The threshold (one of the scores) with the best F1, with its precision and recall."""
    best = None
    for t in np.unique(scores):
        r = pr_at(scores, labels, t)
        if best is None or r["f1"] > best["f1"]:
            best = r
    return best if best is not None else pr_at(scores, labels, float("inf"))


def pr_curve(scores: np.ndarray, labels: np.ndarray, points: int = 20) -> list[dict]:
    """Precision/recall at `points` thresholds spread over the score quantiles."""
    qs = np.unique(np.quantile(np.asarray(scores), np.linspace(0, 1, points)))
    return [pr_at(scores, labels, t) for t in qs]


def fpr_estimate(good_scores: np.ndarray, threshold: float, target_fpr: float) -> FprThreshold:
    """False-alarm rate of any given threshold, estimated from good scores (Bayesian, uniform prior)."""
    from scipy.stats import beta

    s = np.asarray(good_scores, np.float64)
    n, k = len(s), int((s >= threshold).sum())
    lo, hi = beta.ppf([0.05, 0.95], k + 1, n - k + 1)
    return FprThreshold(float(threshold), n, k, target_fpr, (k + 1) / (n + 2), (float(lo), float(hi)), True)


ORDER_PARTS = 4  # fpr_by_order: quarters of the good images in name order
MIN_PER_PART = 5


def fpr_by_order(names: list[str], scores: np.ndarray, parts: int = ORDER_PARTS) -> list[dict] | None:
    """False-alarm rate of good images in `parts` consecutive runs of their order (names and scores already in name
    order; scores normalized, 1.0 = threshold). With timestamped or counted names the runs are periods of production:
    alarms piling up in the last runs while the median score climbs mean the parts changed after the fit (wear,
    soiling, a new setting), not a threshold set too low. None when a run would hold fewer than MIN_PER_PART images."""
    s = np.asarray(scores, np.float64)
    if len(s) < parts * MIN_PER_PART:
        return None
    runs = np.array_split(np.arange(len(s)), parts)
    return [{"first": names[r[0]], "last": names[r[-1]], "images": len(r), "flagged": int((s[r] >= 1.0).sum()),
             "fpr": float((s[r] >= 1.0).mean()), "median_score": float(np.median(s[r]))} for r in runs]


def late_alarm_p(runs: list[dict]) -> float:
    """One-sided Fisher exact p-value that the last run of `fpr_by_order` has a higher false-alarm rate than the
    runs before it together: small (say < 0.01) when alarms pile up late, not by the luck of a small sample."""
    from scipy.stats import fisher_exact

    late, early = runs[-1], runs[:-1]
    late_ok, early_ok = late["images"] - late["flagged"], sum(g["images"] - g["flagged"] for g in early)
    table = [[late["flagged"], late_ok], [sum(g["flagged"] for g in early), early_ok]]
    return float(fisher_exact(table, alternative="greater").pvalue)
