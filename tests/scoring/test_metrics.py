import numpy as np
import pytest

from inspector.scoring.metrics import f1_optimal, fpr_by_order, fpr_estimate, fpr_threshold, pr_at


@pytest.mark.parametrize("n,target", [(100, 0.01), (200, 0.05), (500, 0.02)])
def test_fpr_threshold_hits_its_target_on_fresh_good_scores(n, target):
    """Averaged over many hold-out draws, the realized FPR matches the expected FPR."""
    rng = np.random.default_rng(0)
    fresh = rng.gamma(2.0, 1.0, 200_000)
    realized, expected = [], []
    for _ in range(200):
        t = fpr_threshold(rng.gamma(2.0, 1.0, n), target)
        realized.append((fresh >= t.threshold).mean())
        expected.append(t.expected_fpr)
        assert t.interval_90[0] < t.expected_fpr < t.interval_90[1]
    assert np.mean(expected) <= target
    assert abs(np.mean(realized) - np.mean(expected)) < 0.25 * np.mean(expected)


def test_too_few_images_for_target_is_flagged_not_hidden():
    t = fpr_threshold(np.arange(20, dtype=float), 0.01)
    assert not t.attainable
    assert t.threshold > 19 and t.above == 0
    assert t.expected_fpr == pytest.approx(1 / 21)


def test_pr_at_and_f1_optimal():
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9, 0.4])
    labels = np.array([0, 0, 0, 1, 1, 1])
    r = pr_at(scores, labels, 0.5)
    assert (r["tp"], r["fp"], r["fn"], r["tn"]) == (2, 0, 1, 3)
    best = f1_optimal(scores, labels)
    assert best["threshold"] == 0.4 and best["f1"] == 1.0


def test_fpr_estimate_of_given_threshold():
    t = fpr_estimate(np.linspace(0, 1, 99), 0.5, 0.01)
    assert t.above == 49 and t.interval_90[0] < 0.5 < t.interval_90[1]


def test_fpr_by_order_splits_in_consecutive_runs():
    """Good parts scored in production order: the late alarms of a drifting product land in the last run."""
    names = [f"p{i:02d}" for i in range(22)]
    scores = np.r_[np.full(16, 0.4), [0.9, 1.1, 1.2, 1.3, 1.5, 2.0]]
    runs = fpr_by_order(names, scores)
    assert [g["images"] for g in runs] == [6, 6, 5, 5]
    assert [g["fpr"] for g in runs] == [0.0, 0.0, 0.0, 1.0]
    assert runs[2] == {"first": "p12", "last": "p16", "images": 5, "flagged": 0, "fpr": 0.0, "median_score": 0.4}
    assert runs[3]["median_score"] == pytest.approx(1.3)
    assert fpr_by_order(names[:19], scores[:19]) is None  # a run of fewer than 5 images says nothing


@pytest.mark.parametrize("n", [7, 14, 40])
def test_few_held_out_images_keep_the_promise_they_state(n):
    """Below 1/target - 1 images no rank promises 1%: the rule promises 1/(n+1) whatever the scores' shape and
    the target itself when they are log-normal; both promises hold on fresh good scores, averaged over hold-outs."""
    rng = np.random.default_rng(1)
    for draw, promise_holds_at in (
        (lambda size: rng.lognormal(0.0, 0.3, size), "target"),
        (lambda size: rng.gamma(0.5, 1.0, size) + 1e-3, "bound"),
    ):
        fresh = draw(200_000)
        realized = []
        for _ in range(300):
            t = fpr_threshold(draw(n), 0.01)
            assert not t.attainable and t.rule == "max+lognormal" and t.above == 0
            assert t.expected_fpr == pytest.approx(1 / (n + 1)) and t.model_fpr == 0.01
            realized.append((fresh >= t.threshold).mean())
        assert np.mean(realized) <= (0.015 if promise_holds_at == "target" else 1 / (n + 1))
