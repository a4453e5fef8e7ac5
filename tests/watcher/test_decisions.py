"""Table tests of the watcher's pure decision functions."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import pytest

from inspector.config.line import Rules
from inspector.io.camera import camera_key, sample_frame
from inspector.io.outbox import backoff_delay
from inspector.io.sources import file_key, is_candidate_name, is_complete
from inspector.watcher.decisions import AlertState, alert_payload, effective_threshold, is_anomalous, should_alert


@pytest.mark.parametrize(
    "rules, manifest, expected",
    [
        (Rules(), 2.0, 2.0),
        (Rules(threshold_scale=1.5), 2.0, 3.0),
        (Rules(threshold=0.7, threshold_scale=1.5), 2.0, 0.7),  # absolute override wins
    ],
)
def test_effective_threshold(rules, manifest, expected):
    assert effective_threshold(manifest, rules) == pytest.approx(expected)


@pytest.mark.parametrize(
    "raw, thr, expected",
    [
        (1.0, 1.0, True),
        (0.999, 1.0, False),
        (5.0, 1.0, True),
        (math.nan, 1.0, False),
        (math.inf, 1.0, True),
    ],
)
def test_is_anomalous(raw, thr, expected):
    assert is_anomalous(raw, thr) is expected


def run_rules(rules: Rules, frames: list[tuple[float, bool]]) -> list[tuple[bool, bool]]:
    """(time, anomalous) per frame -> (flag, alert) per frame."""
    state, out = AlertState(), []
    for t, anomalous in frames:
        d, state = should_alert(state, anomalous, t, rules)
        out.append((d.flag, d.alert))
    return out


F, A, N = (False, False), (True, True), (True, False)  # nothing / flagged+alert / flagged, no alert


@pytest.mark.parametrize(
    "rules, frames, expected",
    [
        # one-of-one, no cooldown: every anomalous file is flagged and alerted
        (Rules(), [(0, True), (1, False), (2, True)], [A, F, A]),
        # 3 of 5 debounce: an isolated anomalous frame is not a defect
        (Rules(debounce_n=3, debounce_m=5), [(0, True), (1, False), (2, False), (3, False), (4, True)], [F] * 5),
        # 3 of 5 reached on the third anomalous frame within the window
        (Rules(debounce_n=3, debounce_m=5), [(0, True), (1, False), (2, True), (3, True)], [F, F, F, A]),
        # the frame that completes the window must itself be anomalous
        (Rules(debounce_n=2, debounce_m=3), [(0, True), (1, True), (2, False)], [F, A, F]),
        # old anomalies slide out of the window
        (Rules(debounce_n=2, debounce_m=2), [(0, True), (1, False), (2, True)], [F, F, F]),
        # cooldown: a persisting defect is one alert; with flag_in_cooldown the frames are still stored
        (Rules(cooldown_s=10), [(0, True), (1, True), (2, True)], [A, N, N]),
        (Rules(cooldown_s=10, flag_in_cooldown=False), [(0, True), (1, True), (2, True)], [A, F, F]),
        # the cooldown restarts with every raised frame: quiet for 10 s is needed for a new alert
        (Rules(cooldown_s=10), [(0, True), (9, True), (18, True), (29, True)], [A, N, N, A]),
        (Rules(cooldown_s=10), [(0, True), (5, False), (10, True)], [A, F, A]),
    ],
)
def test_should_alert_table(rules, frames, expected):
    assert run_rules(rules, frames) == expected


def test_camera_defect_of_300_frames_is_one_alert():
    rules = Rules(debounce_n=3, debounce_m=5, cooldown_s=60, flag_in_cooldown=False)
    frames = [(i / 30, True) for i in range(300)]
    out = run_rules(rules, frames)
    assert sum(a for _, a in out) == 1 and sum(f for f, _ in out) == 1


def test_rules_reject_n_greater_than_m():
    with pytest.raises(ValueError, match="debounce_n"):
        Rules(debounce_n=4, debounce_m=3)


@pytest.mark.parametrize(
    "index, t, last, nth, fps, expected",
    [
        (0, 0.0, None, 1, None, True),
        (1, 0.1, 0.0, 2, None, False),
        (2, 0.2, 0.0, 2, None, True),
        (3, 0.05, 0.0, 1, 10.0, False),  # faster than max_fps
        (4, 0.10, 0.0, 1, 10.0, True),
    ],
)
def test_sample_frame(index, t, last, nth, fps, expected):
    assert sample_frame(index, t, last, nth, fps) is expected


@pytest.mark.parametrize(
    "name, ok",
    [
        ("a.png", True),
        ("A.JPG", True),
        ("x.tiff", True),
        (".a.png", False),
        ("a.png.tmp", False),
        ("a.png.part", False),
        ("notes.txt", False),
        ("a.png~", False),
    ],
)
def test_candidate_names(name, ok):
    assert is_candidate_name(name) is ok


@pytest.mark.parametrize(
    "mtime, now, stable, hinted, done",
    [
        (100.0, 100.2, 1.0, False, False),
        (100.0, 101.0, 1.0, False, True),
        (100.0, 100.0, 1.0, True, True),
    ],
)
def test_is_complete(mtime, now, stable, hinted, done):
    assert is_complete(mtime, now, stable, hinted) is done


def test_keys_are_stable_and_distinct():
    assert file_key("f", "a.png", 10, 5) == file_key("f", "a.png", 10, 5)
    assert (
        len(
            {
                file_key("f", "a.png", 10, 5),
                file_key("f", "a.png", 11, 5),
                file_key("f", "a.png", 10, 6),
                file_key("g", "a.png", 10, 5),
                camera_key("f", "s", 1),
                camera_key("f", "s", 2),
            }
        )
        == 6
    )


@pytest.mark.parametrize("attempts, expected", [(1, 1.0), (2, 2.0), (3, 4.0), (10, 60.0), (1000, 60.0)])
def test_backoff(attempts, expected):
    assert backoff_delay(attempts, 1.0, 60.0) == expected


def test_alert_payload_has_idempotency_key_and_json_types():
    p = alert_payload(
        line="l1",
        source="cam",
        frame_key="k" * 40,
        created_at=datetime(2026, 1, 2, tzinfo=timezone.utc),
        score=1.23456,
        raw_score=2.5,
        threshold=2.0,
        model_version="v3",
        image_path="a.png",
        overlay_path="a.overlay.jpg",
        width=64,
        height=48,
        origin="x.png",
    )
    assert (
        p["idempotency_key"] == "k" * 40 and p["score"] == 1.2346 and p["created_at"].startswith("2026-01-02T00:00:00")
    )
    assert {type(v) for v in p.values()} <= {str, float, int}
