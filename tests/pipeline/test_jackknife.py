"""Leave-one-out scores of the fit images under the feature Gaussian: the closed form equals a refit without the
image, a fitted model's left-out scores match a model fitted without that image, and calibration counts them."""

import json

import numpy as np
import pytest
import torch

from inspector.config.fit import CalibrateSettings, FitSettings
from inspector.data.datasets import LoadReport
from inspector.pipeline import jackknife
from inspector.pipeline.calibrate import calibrate_model
from inspector.pipeline.checkpoint import FIT_FILE, load_model, staging
from inspector.pipeline.fit import fit, fit_gaussian
from inspector.pipeline.infer import score_paths
from tests.conftest import FAST_FIT

# the feature Gaussian alone in the map, one covariance per position: where left-out scores are exact
ALONE = dict(
    gauss_source="features",
    gauss_cell=1,
    w_latent=0.0,
    w_global=0.0,
    global_bank=0,
    score_top=0.0,
    exposure="standardize",
)


def test_left_out_distance_is_the_distance_to_a_gaussian_refitted_without_the_sample():
    n, c, h, w = 9, 12, 2, 3  # fewer samples than channels: the near-singular case the jackknife is for
    f = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = jackknife.left_out_distances(f).numpy()
    x = f.numpy().reshape(n, c, h * w)
    for p in range(h * w):
        full = x[:, :, p]
        ridge = 0.01 * np.trace(np.cov(full.T)) / c  # the full fit's ridge, as the closed form keeps it
        for i in range(n):
            rest = np.delete(full, i, 0)
            cov = np.cov(rest.T) + ridge * np.eye(c)
            e = full[i] - rest.mean(0)
            assert got[i].reshape(-1)[p] == pytest.approx(np.sqrt(e @ np.linalg.solve(cov, e)), rel=1e-4)
    # in-sample, the near-singular Gaussian scores its own samples far lower: why fit images need leaving out
    mean, prec = fit_gaussian(f.float())
    d = (f.float() - mean).permute(2, 3, 0, 1).reshape(h * w, n, c)
    inside = torch.einsum("pnc,pcd,pnd->np", d, prec, d).sqrt()
    assert (inside.numpy() < 0.5 * got.reshape(n, -1)).all()


def test_alone_in_map_only_for_the_feature_gaussian_alone_one_covariance_per_position():
    alone = FitSettings(**ALONE).network
    assert jackknife.alone_in_map(alone)
    for other in ({"gauss_source": "latent"}, {"gauss_cell": 2}, {"w_latent": 1.0}, {"w_recon": 1.0}):
        assert not jackknife.alone_in_map(alone.model_copy(update=other)), other
    assert jackknife.alone_in_map(alone.model_copy(update={"w_global": 1.0}))  # no bank: no whole-image term


def test_a_fit_image_left_out_scores_as_a_model_fitted_without_it_would(synthetic_data, tmp_path):
    s = FitSettings(**FAST_FIT, **ALONE)
    fit(synthetic_data, tmp_path / "all", s, show=False)
    info = json.loads((staging(tmp_path / "all") / FIT_FILE).read_text())
    assert len(info["left_out"]) == info["fit_images"] > 0
    first = sorted(info["left_out"], key=lambda r: r["path"])[0]
    # the same data without that image (the hold-out, the last 20% by name, stays the same images)
    without = tmp_path / "without"
    (without / "train" / "good").mkdir(parents=True)
    for p in (synthetic_data / "train" / "good").iterdir():
        if str(p) != first["path"]:
            (without / "train" / "good" / p.name).symlink_to(p)
    fit(without, tmp_path / "rest", s, show=False)
    rest = json.loads((staging(tmp_path / "rest") / FIT_FILE).read_text())
    assert [h["path"].split("/")[-1] for h in rest["holdout"]] == [h["path"].split("/")[-1] for h in info["holdout"]]
    net, pre, _ = load_model(tmp_path / "rest")
    unseen = next(score_paths(net, pre, [first["path"]], LoadReport())).score
    net, pre, _ = load_model(tmp_path / "all")
    seen = next(score_paths(net, pre, [first["path"]], LoadReport())).score
    # equal but for the feature standardization and score scale, which the one image moves a little
    assert first["score"] == pytest.approx(unseen, rel=0.03)
    assert seen < 0.5 * unseen  # scored in-sample, the fit image would say nothing about unseen good parts

    cal = calibrate_model(tmp_path / "all", CalibrateSettings(fpr=0.01))
    assert cal["left_out_images"] == info["fit_images"] and cal["holdout_images"] == info["holdout_images"]
    assert cal["fpr"]["holdout"] == info["fit_images"] + info["holdout_images"]
    assert "each scored as a model fitted without it would score it" in cal["meaning"]


def test_a_latent_model_calibrates_on_its_hold_out_alone(fitted_model):
    info = json.loads((staging(fitted_model) / FIT_FILE).read_text())
    assert info["left_out"] == []
    cal = calibrate_model(fitted_model, CalibrateSettings(fpr=0.05))
    assert "left_out_images" not in cal and cal["fpr"]["holdout"] == info["holdout_images"]
