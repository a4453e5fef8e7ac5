"""Cross-fit calibration scores: every fit image is scored by a refit that never saw it, only where the hold-out is
too small, and calibration counts those scores and says how they were made."""

import json
from pathlib import Path

import numpy as np

from inspector.config.fit import CalibrateSettings, FitSettings
from inspector.data.datasets import LoadReport
from inspector.pipeline import crossfit
from inspector.pipeline.calibrate import calibrate_model
from inspector.pipeline.checkpoint import FIT_FILE, load_model, staging
from inspector.pipeline.fit import fit
from inspector.pipeline.infer import score_paths
from tests.conftest import FAST_FIT


def test_every_fit_image_is_scored_by_a_refit_that_never_saw_it():
    paths = [Path(f"img_{i:03d}.png") for i in range(23)]
    seen: list[set] = []

    def refit(train):
        seen.append(set(train))
        return set(train)

    def score(model, fold):  # 1.0 would mean the model was fitted on the image it scores
        return [(str(p), float(p in model)) for p in fold if p.name != "img_007.png"]  # one unreadable

    out = crossfit.left_out_scores(paths, 5, refit, score)
    assert [s for _, s in out] == [0.0] * 22 and [p for p, _ in out] == [
        str(p) for p in paths if p.name != "img_007.png"
    ]
    assert len(seen) == 5 and all(len(s) in (18, 19) for s in seen)
    folds = crossfit.fold_of(paths, 5)  # contiguous runs: a left-out image's neighbours in the series are out too
    assert [p for f in folds for p in f] == paths and [len(f) for f in folds] == [5, 4, 5, 4, 5]
    shuffled = crossfit.fold_of(paths, 5, contiguous=False, seed=3)
    assert sorted(p for f in shuffled for p in f) == paths and shuffled != folds
    assert shuffled == crossfit.fold_of(paths, 5, contiguous=False, seed=3)


def test_cross_fit_only_where_the_hold_out_cannot_promise_one_percent_and_refits_are_cheap():
    assert crossfit.wanted(5, 27, 7)
    assert not crossfit.wanted(5, 398, 99)  # the hold-out promises 1% by rank
    assert not crossfit.wanted(5, 300, 75)  # refits would cost minutes
    assert not crossfit.wanted(0, 27, 7) and not crossfit.wanted(1, 27, 7)  # off
    assert not crossfit.wanted(5, 9, 3)  # too few images for five folds


def test_a_small_hold_out_is_calibrated_with_cross_fit_scores_of_the_fit_images(synthetic_data, tmp_path):
    s = FitSettings(**{**FAST_FIT, "crossfit_folds": 3}, select=False, exposure="standardize")
    fit(synthetic_data, tmp_path / "m", s, show=False)
    info = json.loads((staging(tmp_path / "m") / FIT_FILE).read_text())
    assert info["left_out_method"] == "cross-fit, 3 folds" and len(info["left_out"]) == info["fit_images"]
    net, pre, _ = load_model(tmp_path / "m")
    inside = [r.score for r in score_paths(net, pre, [Path(r["path"]) for r in info["left_out"]], LoadReport())]
    crossed = [r["score"] for r in info["left_out"]]
    held = [r["score"] for r in info["holdout"]]
    # the final model saw the fit images: in-sample they read low; scored by refits that did not, like the hold-out
    assert np.median(crossed) > np.median(inside)
    assert abs(np.median(crossed) / np.median(held) - 1) < abs(np.median(inside) / np.median(held) - 1)
    cal = calibrate_model(tmp_path / "m", CalibrateSettings(fpr=0.01))
    assert cal["left_out_images"] == info["fit_images"] and cal["left_out_method"] == "cross-fit, 3 folds"
    assert cal["fpr"]["holdout"] == info["fit_images"] + info["holdout_images"]
    assert "refitted without it (cross-fit" in cal["meaning"]


def test_refits_of_the_feature_gaussian_alone_skip_the_autoencoder_and_score_the_same(synthetic_data, monkeypatch):
    """The cross-fit's refits only score: where the map reads no latent (the feature Gaussian alone), training the
    autoencoder is skipped, and the left-out scores are those of a refit that trained it."""
    from inspector.data.datasets import discover
    from inspector.pipeline import fit as fitting

    s = FitSettings(**{**FAST_FIT, "steps": 30}, select=False, gauss_source="features", gauss_cell=1)
    ds = discover(synthetic_data)
    pre = fitting.preprocess_for(s, ds.train)[0].pre
    fit_paths, holdout, fold = ds.train[:40], ds.train[40:46], ds.train[46:52]
    job = fitting._Job(s, fit_paths, holdout, [], False, None)
    trained = []
    real = fitting.train_autoencoder
    monkeypatch.setattr(fitting, "train_autoencoder", lambda *a, **k: trained.append(1) or real(*a, **k))
    quick = fitting._fit_one(s, pre, job, scoring_only=True)
    assert trained == [] and quick.net.cfg.gauss_rank == len(fit_paths) - 1
    full = fitting._fit_one(s, pre, job)
    assert trained == [1]
    a = [r.score for r in score_paths(quick.net, quick.pre, fold, LoadReport())]
    b = [r.score for r in score_paths(full.net, full.pre, fold, LoadReport())]
    np.testing.assert_allclose(a, b, rtol=1e-5)
    latent = s.model_copy(update={"network": s.network.model_copy(update={"gauss_source": "latent"})})
    fitting._fit_one(latent, pre, fitting._Job(latent, fit_paths, holdout, [], False, None), scoring_only=True)
    assert trained == [1, 1]  # a map that reads the latent needs the autoencoder, refit or not
