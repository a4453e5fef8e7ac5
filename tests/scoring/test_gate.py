"""The promotion gate: pure functions on metrics and counts."""

import pytest

from inspector.scoring.gate import GateSettings, binomial_tail, compare, fpr_check


def test_binomial_tail_matches_direct_sum():
    assert binomial_tail(0, 20, 0.05) == 1.0
    assert binomial_tail(1, 20, 0.05) == pytest.approx(1 - 0.95**20)
    assert binomial_tail(3, 20, 0.05) == pytest.approx(0.0755, abs=1e-4)
    assert binomial_tail(21, 20, 0.05) == 0.0


def test_gate_fails_a_worse_candidate_and_passes_within_tolerance():
    cur = {"image_auroc": 0.95, "pixel_auroc": 0.90, "aupro": 0.80}
    candidate = {**cur, "image_auroc": 0.947, "good_images": 20, "false_alarms": 1}
    ok = compare(candidate, cur, 0.05, GateSettings(max_drop=0.005))
    assert ok.ok and not ok.reasons
    bad = compare({**cur, "aupro": 0.70, "good_images": 20, "false_alarms": 1}, cur, 0.05)
    assert not bad.ok and len(bad.reasons) == 1 and "aupro 0.7000 is worse than current 0.8000" in bad.reasons[0]
    first = compare({"image_auroc": 0.5, "good_images": 20, "false_alarms": 0}, None, 0.05)
    assert first.ok  # nothing to compare with: only the false-alarm rate is gated


def test_gate_fpr_check_fails_only_beyond_chance():
    assert fpr_check(2, 20, 0.05, 0.95).ok  # 10% of 20 images happens at a 5% rate
    assert not fpr_check(5, 20, 0.05, 0.95).ok
    assert not compare({"good_images": 20, "false_alarms": 6}, None, 0.05).ok
    no_labels = compare({"good_images": 10, "false_alarms": 0}, {"image_auroc": 0.9}, 0.05)
    assert no_labels.ok and "only the false-alarm rate" in no_labels.checks[0].detail


# ---- flows --------------------------------------------------------------------------------------
