"""A tiled model: a handful of long strips fit and calibrate, the ONNX runtime scores a frame as the torch
pipeline does, and a small flaw on a long strip is found with tiles where the whole-strip input loses it; with
`tiles` not set by hand, selection tries tiles beside whole images where the auto rule would tile, and only there."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.config.fit import CalibrateSettings, FitSettings
from inspector.data.datasets import LoadReport
from inspector.data.synthetic import add_slub, good_strip
from inspector.pipeline.calibrate import calibrate_model
from inspector.pipeline.checkpoint import load_model, read_json
from inspector.pipeline.export import export_model
from inspector.pipeline.fit import fit, preprocess_for
from inspector.pipeline.infer import score_paths
from inspector.pipeline.latent import embed_paths
from inspector.runtime.scorer import Scorer

pytestmark = pytest.mark.slow

STRIP = (128, 2048)  # (H, W): whole, a 32x512 input (4x shrunk); tiled at tile_shrink 1, full resolution
FAST = dict(max_pixels=20480, tiles="auto", tile_shrink=1.0, steps=150, batch_size=1024, select=False)


@pytest.fixture(scope="module")
def strips(tmp_path_factory) -> Path:
    """12 good strips to fit on (a handful, as a line-scan user has), 4 good and 4 with a 12x12 px slub to test."""
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("strips") / "fabric"
    for sub in ("train/good", "test/good", "test/slub", "ground_truth/slub"):
        (root / sub).mkdir(parents=True)
    for i in range(12):
        cv2.imwrite(str(root / "train/good" / f"{i:03d}.png"), good_strip(rng, STRIP))
    for i in range(4):
        cv2.imwrite(str(root / "test/good" / f"{i:03d}.png"), good_strip(rng, STRIP))
        img, mask = add_slub(good_strip(rng, STRIP), rng, 12)
        cv2.imwrite(str(root / "test/slub" / f"{i:03d}.png"), img)
        cv2.imwrite(str(root / "ground_truth/slub" / f"{i:03d}_mask.png"), mask)
    return root


@pytest.fixture(scope="module")
def tiled(strips, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiled"
    fit(strips, out, FitSettings(**FAST), show=False)
    calibrate_model(out, CalibrateSettings(fpr=0.05))
    return out


def scores(model: Path, paths: list[Path]) -> dict[Path, tuple[float, np.ndarray]]:
    net, pre, _ = load_model(model)
    return {r.path: (r.score, r.amap) for r in score_paths(net, pre, paths, LoadReport())}


def test_a_handful_of_strips_fit_and_calibrate_on_tiles(tiled):
    info = read_json(tiled / "staging" / "fit.json", "")
    assert info["tiling"]["tiles"] == [1, 15] and info["tiling"]["reason"].startswith("tiled: 2048x128 images")
    assert info["tiling"]["shrink"] <= 1.0 < 4.0 == info["tiling"]["whole_image_shrink"]
    assert (info["fit_images"], info["holdout_images"]) == (7, 5)  # held-out images are what calibrate counts
    cal = read_json(tiled / "staging" / "calibration.json", "")
    assert cal["tiles_per_image"] == 15 and "counts held-out images, not tiles" in cal["meaning"]


def test_the_onnx_runtime_scores_a_tiled_frame_as_torch_does(tiled, strips):
    version = export_model(tiled)
    m = json.loads((version / "manifest.json").read_text())
    assert m["preprocess"]["tiles"] == [1, 15] and m["tiling"]["score"] == "the highest tile score"
    assert m["input"]["size"] == [128, 160]  # the graph's input is one tile
    scorer = Scorer.load(version, providers=["cpu"])
    paths = sorted((strips / "test").glob("*/*.png"))
    ref = scores(tiled, paths)
    got = scorer.score_batch(paths)  # 8 frames x 15 tiles through the graph in batches, stitched per frame
    for p, r in zip(paths, got):
        assert abs(r.raw_score - ref[p][0]) <= 1e-3 * scorer.threshold
        assert r.anomaly_map.shape == STRIP
        ref_map = cv2.resize(ref[p][1], STRIP[::-1], interpolation=cv2.INTER_LINEAR) / scorer.threshold
        assert np.abs(r.anomaly_map - ref_map).max() < 1e-2
    net, pre, _ = load_model(tiled)
    _, _, embs = embed_paths(net, pre, paths)  # the torch side: the highest-scoring tile's embedding
    assert np.abs(np.stack([r.embedding for r in got]) - embs).max() < 1e-3


def test_a_small_flaw_on_a_long_strip_is_found_with_tiles_and_lost_without(tiled, strips, tmp_path):
    whole = tmp_path / "whole"
    fit(strips, whole, FitSettings(**{**FAST, "tiles": "off"}), show=False)
    assert read_json(whole / "staging" / "fit.json", "")["tiling"]["tiles"] == [1, 1]
    good = sorted((strips / "test/good").glob("*.png"))
    flaws = sorted((strips / "test/slub").glob("*.png"))
    for model, found in ((tiled, True), (whole, False)):
        held = [h["score"] for h in read_json(model / "staging" / "fit.json", "")["holdout"]]
        s = scores(model, good + flaws)
        top_good = max(held + [s[p][0] for p in good])
        assert all(s[p][0] > top_good for p in flaws) is found
        if not found:  # the whole strip, shrunk 4x, averages the weave and the slub alike: no flaw stands out
            assert not any(s[p][0] > top_good for p in flaws)
    s = scores(tiled, flaws)
    for p in flaws:  # and the stitched map's peak lies on the flaw
        mask = cv2.imread(str(strips / "ground_truth/slub" / f"{p.stem}_mask.png"), cv2.IMREAD_GRAYSCALE)
        amap = cv2.resize(s[p][1], STRIP[::-1], interpolation=cv2.INTER_LINEAR)
        y, x = np.unravel_index(np.argmax(amap), amap.shape)
        ys, xs = np.nonzero(mask)
        assert abs(y - ys.mean()) < 16 and abs(x - xs.mean()) < 16


def test_tiles_are_a_candidate_only_where_the_auto_rule_would_tile_and_tiles_is_not_set(strips, tmp_path):
    paths = sorted((strips / "train/good").glob("*.png"))
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), good_strip(np.random.default_rng(0), (128, 160)))  # near full size whole
    auto = dict(max_pixels=20480, tile_shrink=1.0)
    whole, tiled = preprocess_for(FitSettings(**auto), paths)
    assert whole.pre.tiles == (1, 1) and tiled is not None and tiled.pre.tiles == (1, 15)
    assert preprocess_for(FitSettings(**auto), [small])[1] is None  # the rule would not tile: nothing tried
    hand = (
        ({"tiles": "off"}, (1, 1)),
        ({"tiles": "auto"}, (1, 15)),
        ({"tiles": "1x4"}, (1, 4)),
        ({"select": False}, (1, 1)),
    )
    for fixed, tiles in hand:  # set by hand, or selection off: not searched
        plan, extra = preprocess_for(FitSettings(**auto, **fixed), paths)
        assert extra is None and plan.pre.tiles == tiles


def test_selection_fits_tiles_after_whole_images_and_names_the_choice(strips, tmp_path):
    """On long strips with a fine weave, synthetic defects on held-out strips are found on tiles and lost on the
    4x shrunk whole strip: the tiled candidates (judged last, so ties keep whole images) win, and fit.json says so."""
    out = tmp_path / "chosen"
    s = FitSettings(**{k: v for k, v in FAST.items() if k not in ("tiles", "select")}, exposure="standardize")
    r = fit(strips, out, s, show=False)
    info = read_json(out / "staging" / "fit.json", "")
    tried = info["selection"]["tried"]
    fits = [row["fit"] for row in tried]
    assert fits == sorted(fits) and set(fits) == {0, 1, 2}  # whole images, their feature Gaussian, then tiles
    assert all(("tiles 1x15" in row["name"]) == (row["fit"] == 2) for row in tried)
    assert all(row["name"].startswith("feature Gaussian") == (row["fit"] == 1) for row in tried)
    chosen = next(row for row in tried if row["chosen"])
    assert chosen["fit"] == 2 and info["selection"]["chosen"] == chosen["name"]
    assert info["tiling"]["tiles"] == [1, 15] and info["tiling"]["reason"].startswith("tiles chosen by the selection")
    assert info["tiling"]["tried"]["whole"]["tiles"] == [1, 1]
    assert info["tiling"]["tried"]["tiled_auroc"] > info["tiling"]["tried"]["whole_auroc"] + 0.005
    assert (info["fit_images"], info["holdout_images"]) == (7, 5)  # the tiled rule's hold-out for both
    net, pre, _ = load_model(out)
    assert pre.tiles == (1, 15) and r.tiling == info["tiling"]
