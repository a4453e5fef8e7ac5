"""The promotion gate: may a newly exported version replace `current`? Pure functions, no torch, no IO.

Two questions, both answered on the same labelled evaluation set for candidate and current:

1. Is the candidate not worse? Each threshold-free metric (image AUROC, pixel AUROC, AUPRO) may drop by
   at most `max_drop` below the current version's value. Threshold-dependent numbers (F1) move with
   the calibration and are reported, not gated.
2. Is its measured false-alarm rate within the calibrated target? A handful of good test images
   cannot pin a rate down, so the gate fails only when the observed false alarms are too many to be
   chance at the target rate (one-sided binomial test at `fpr_confidence`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pydantic import Field

from inspector.config.fit import Settings

GATED_METRICS = ("image_auroc", "pixel_auroc", "aupro")


class GateSettings(Settings):
    """When a retrained model may replace the one the line runs."""

    metrics: tuple[str, ...] = Field(GATED_METRICS, description="Metrics that must not get worse than `current`'s.")
    max_drop: float = Field(0.005, ge=0, le=1, description="Allowed drop of each metric below `current` (noise).")
    fpr_confidence: float = Field(
        0.95,
        gt=0.5,
        lt=1,
        description="Fail when the good test images' false alarms exceed the target FPR with this confidence.",
    )


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class GateResult:
    ok: bool
    checks: list[Check] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        """Why the gate failed (empty when it passed)."""
        return [c.detail for c in self.checks if not c.ok]


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): how likely k or more false alarms are at rate p."""
    if k <= 0:
        return 1.0
    return float(sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)))


def fpr_check(false_alarms: int, good_images: int, target_fpr: float, confidence: float) -> Check:
    """Fail only when `false_alarms` of `good_images` would be unlikely at the target rate."""
    if good_images <= 0:
        return Check("fpr", True, "no good test images: false-alarm rate not measured")
    p = binomial_tail(false_alarms, good_images, target_fpr)
    rate = f"{false_alarms}/{good_images} good test images flagged ({false_alarms / good_images:.1%})"
    if p < 1 - confidence:
        return Check("fpr", False, f"{rate}: above the {target_fpr:.1%} target (chance at that rate: {p:.1%})")
    return Check("fpr", True, f"{rate}: consistent with the {target_fpr:.1%} target")


def metric_check(name: str, candidate: float | None, current: float | None, max_drop: float) -> Check | None:
    """None when the candidate has no value for the metric (e.g. no masks: no pixel metrics)."""
    if candidate is None:
        return None
    if current is None:
        return Check(name, True, f"{name} {candidate:.4f} (nothing to compare with)")
    delta = candidate - current
    if delta >= -max_drop:
        return Check(name, True, f"{name} {candidate:.4f}, current {current:.4f} ({delta:+.4f}): not worse")
    return Check(
        name,
        False,
        f"{name} {candidate:.4f} is worse than current {current:.4f} ({delta:+.4f}; allowed drop {max_drop:g})",
    )


def compare(candidate: dict, current: dict | None, target_fpr: float, s: GateSettings | None = None) -> GateResult:
    """Gate a candidate's evaluation metrics against `current`'s (None: there is no current version).

    Both dicts hold metric values plus `good_images` and `false_alarms` counts at each version's own
    calibrated threshold, measured on the same evaluation set.
    """
    s = s or GateSettings()
    checks = [
        c
        for name in s.metrics
        if (c := metric_check(name, candidate.get(name), (current or {}).get(name), s.max_drop)) is not None
    ]
    if not checks:
        checks.append(
            Check("labelled", True, "no labelled defects in the evaluation set: only the false-alarm rate is gated")
        )
    checks.append(
        fpr_check(
            int(candidate.get("false_alarms", 0)), int(candidate.get("good_images", 0)), target_fpr, s.fpr_confidence
        )
    )
    return GateResult(all(c.ok for c in checks), checks)
