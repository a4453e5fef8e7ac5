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
    expected_fpr: float  # the mean false-alarm rate on new good images the rule promises without assumptions
    interval_90: tuple[float, float]
    attainable: bool  # False when too few images to promise the target without assumptions
    rule: str = "rank"  # "rank": k-th largest score; "max+lognormal": see fpr_threshold; "max+margin"
    model_fpr: float | None = None  # the rate if good scores are log-normal ("max+lognormal" only)

    def to_dict(self) -> dict:
        return asdict(self)


MIN_LOGNORMAL = 3  # fewest held-out scores a log-normal prediction bound is fitted to


def fpr_threshold(good_scores: np.ndarray, target_fpr: float) -> FprThreshold:
    """Threshold for a target false-alarm rate from n held-out good scores, and what it can promise.

    n >= 1/target - 1 ("rank"): the k-th largest score, k = floor(target (n+1)). A new good image scores at
    or above it with probability k/(n+1) <= target, whatever the score distribution (exchangeability only);
    over draws of the hold-out that rate is Beta(k, n+1-k) distributed, which gives the interval.

    Fewer images ("max+lognormal"): no rank can promise the target, and the highest score already promises
    only 1/(n+1) (e.g. 12.5% for 7 images): that is stated as `expected_fpr`. The threshold is the larger of
    that maximum and the one-sided Student-t prediction bound for the target on the log scores, which flags a
    new good part with probability exactly `target` if good scores are log-normal (`model_fpr`); taking the
    larger keeps the assumption-free 1/(n+1) bound. Anomaly scores are positive and right-skewed, so the log
    is the scale their spread is closest to normal on.
    """
    from scipy.stats import beta
    from scipy.stats import t as student_t

    s = np.sort(np.asarray(good_scores, np.float64))[::-1]
    n = len(s)
    k = math.floor(target_fpr * (n + 1) + 1e-9)
    if k >= 1:
        lo, hi = beta.ppf([0.05, 0.95], k, n + 1 - k)
        return FprThreshold(
            float(s[k - 1]), n, int((s >= s[k - 1]).sum()), target_fpr, k / (n + 1), (float(lo), float(hi)), True
        )
    lo, hi = beta.ppf([0.05, 0.95], 1, n)
    if n >= MIN_LOGNORMAL and s[-1] > 0 and np.ptp(s) > 0:
        logs = np.log(s)
        bound = logs.mean() + student_t.ppf(1 - target_fpr, n - 1) * logs.std(ddof=1) * math.sqrt(1 + 1 / n)
        thr, rule, model = max(float(s[0]), float(np.exp(bound))), "max+lognormal", target_fpr
    else:  # above every held-out score: a margin of the score spread
        thr, rule, model = float(s[0] + 0.05 * (s[0] - np.median(s))), "max+margin", None
    if thr <= s[0]:
        thr = float(np.nextafter(s[0], np.inf))
    return FprThreshold(thr, n, 0, target_fpr, 1 / (n + 1), (float(lo), float(hi)), False, rule, model)


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
    return {
        "threshold": float(threshold),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "fpr": fpr,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


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
    return [
        {
            "first": names[r[0]],
            "last": names[r[-1]],
            "images": len(r),
            "flagged": int((s[r] >= 1.0).sum()),
            "fpr": float((s[r] >= 1.0).mean()),
            "median_score": float(np.median(s[r])),
        }
        for r in runs
    ]


def late_alarm_p(runs: list[dict]) -> float:
    """One-sided Fisher exact p-value that the last run of `fpr_by_order` has a higher false-alarm rate than the
    runs before it together: small (say < 0.01) when alarms pile up late, not by the luck of a small sample."""
    from scipy.stats import fisher_exact

    late, early = runs[-1], runs[:-1]
    late_ok, early_ok = late["images"] - late["flagged"], sum(g["images"] - g["flagged"] for g in early)
    table = [[late["flagged"], late_ok], [sum(g["flagged"] for g in early), early_ok]]
    return float(fisher_exact(table, alternative="greater").pvalue)
