"""Pure decision functions of the watch loop: no IO, no clocks, so every rule is a table test.

A scored frame is *anomalous* when its raw score reaches the effective threshold. A defect is *raised*
when the current frame is anomalous and at least N of the last M frames were (debounce, so one noisy
camera frame is not a defect). A raised frame is *flagged* (stored for review) and *alerted* unless the
source is cooling down: a defect that stays in view, or a burst of bad parts, is one alert, not 300.
The cooldown restarts with every raised frame, so it ends only after `cooldown_s` without a defect.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from inspector.config.line import Rules


@dataclass(frozen=True)
class AlertState:
    """Per-source memory between frames."""

    recent: tuple[bool, ...] = ()  # anomalous verdicts of the last M frames, oldest first
    last_raised_at: float | None = None  # time (s) of the last raised frame


@dataclass(frozen=True)
class Decision:
    anomalous: bool  # this frame reached the threshold
    flag: bool  # store it as a flagged item
    alert: bool  # send alerts for it


def effective_threshold(manifest_threshold: float, rules: Rules) -> float:
    """Raw threshold for a source: an absolute override wins, else the manifest's scaled."""
    if rules.threshold is not None:
        return float(rules.threshold)
    return float(manifest_threshold) * rules.threshold_scale


def is_anomalous(raw_score: float, threshold: float) -> bool:
    """The verdict; NaN (a broken frame) is never a defect but is logged by the loop."""
    return raw_score == raw_score and raw_score >= threshold


def should_alert(prev: AlertState, anomalous: bool, now: float, rules: Rules) -> tuple[Decision, AlertState]:
    """Debounce (N of last M) and cooldown for one scored frame of one source."""
    recent = (prev.recent + (anomalous,))[-rules.debounce_m :]
    raised = anomalous and sum(recent) >= rules.debounce_n
    cooling = prev.last_raised_at is not None and now - prev.last_raised_at < rules.cooldown_s
    alert = raised and not cooling
    flag = alert or (raised and rules.flag_in_cooldown)
    state = AlertState(recent=recent, last_raised_at=now if raised else prev.last_raised_at)
    return Decision(anomalous=anomalous, flag=flag, alert=alert), state


def alert_payload(
    *,
    line: str,
    source: str,
    frame_key: str,
    created_at: datetime,
    score: float,
    raw_score: float,
    threshold: float,
    model_version: str,
    image_path: str | None,
    overlay_path: str | None,
    width: int,
    height: int,
    origin: str | None,
) -> dict:
    """The JSON document every sink receives; `idempotency_key` lets receivers drop redeliveries. The image paths
    (relative to the media folder) are null for a camera frame whose images could not be saved."""
    return {
        "idempotency_key": frame_key,
        "line": line,
        "source": source,
        "created_at": created_at.isoformat(),
        "score": round(float(score), 4),
        "raw_score": float(raw_score),
        "threshold": float(threshold),
        "model_version": model_version,
        "image_path": image_path,
        "overlay_path": overlay_path,
        "width": int(width),
        "height": int(height),
        "origin": origin,
    }
