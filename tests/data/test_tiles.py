"""Tiles: cut and stitch round-trip a map, the auto rule reads only the images' geometry, bad settings are one line."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from inspector.config.fit import MAX_TILES, FitSettings, fit_overrides
from inspector.data.preprocess import Preprocess, prepare
from inspector.data.tiles import cut, plan, reduce, shrink, starts, stitch

# 2 x 3 tiles of 32x48 overlapping a quarter: steps of 24 and 36 px, a 56x120 canvas
TILED = Preprocess(height=32, width=48, tiles=(2, 3), tile_overlap=0.25)
BUDGET = Preprocess(max_pixels=81920, exposure="standardize")


def test_the_canvas_is_covered_edge_to_edge_with_overlap():
    assert TILED.frame_size(999, 999) == (32 + 24, 48 + 2 * 36)
    corners = starts(TILED)
    assert corners == [(0, 0), (0, 36), (0, 72), (24, 0), (24, 36), (24, 72)]
    ch, cw = TILED.frame_size(1, 1)
    assert corners[-1][0] + TILED.height == ch and corners[-1][1] + TILED.width == cw  # the last tiles end at the edge
    covered = np.zeros((ch, cw), int)
    for y, x in corners:
        covered[y : y + 32, x : x + 48] += 1
    assert covered.min() == 1 and covered.max() == 4  # every pixel seen, the overlaps more than once


def test_cut_then_stitch_gives_a_known_map_back():
    rng = np.random.default_rng(0)
    known = rng.normal(size=TILED.frame_size(1, 1)).astype(np.float32)
    tiles = cut(known, TILED)
    assert tiles.shape == (6, 32, 48)
    assert np.array_equal(tiles[5], known[24:, 72:])  # the bottom-right edge tile
    assert np.array_equal(stitch(tiles, TILED), known)  # overlaps, edge tiles and all
    x = rng.normal(size=(3, *TILED.frame_size(1, 1))).astype(np.float32)  # a (3, H, W) network input cuts alike
    assert cut(x, TILED).shape == (6, 3, 32, 48) and np.array_equal(cut(x, TILED)[4], x[:, 24:, 36:84])


def test_a_map_round_trips_to_the_full_image():
    """A smooth map on a long 90x700 frame, through the canvas and the tiles, back at the frame's size."""
    yy, xx = np.mgrid[0:90, 0:700].astype(np.float32)
    frame_map = np.sin(xx / 60) + np.cos(yy / 25)
    ch, cw = TILED.frame_size(90, 700)
    canvas = cv2.resize(frame_map, (cw, ch), interpolation=cv2.INTER_AREA)  # as `prepare` resizes the frame
    back = cv2.resize(stitch(cut(canvas, TILED), TILED), (700, 90), interpolation=cv2.INTER_LINEAR)
    assert np.abs(back - frame_map)[4:-4, 4:-4].max() < 0.1  # only what a 6x shrink and back loses


def test_overlaps_keep_the_highest_value_and_the_score_is_the_highest_tile():
    maps = np.zeros((6, 32, 48), np.float32)
    maps[0, 30, 40] = 5.0  # in the overlap of tiles 0, 1, 3, 4, which all see 0 there
    maps[4, 10, 10] = 2.0
    embs = np.eye(6, dtype=np.float32)
    score, amap, emb = reduce(maps.reshape(6, -1).max(1), maps, embs, TILED)
    assert score == 5.0 and amap.max() == score and amap[30, 40] == 5.0 and amap[24 + 10, 36 + 10] == 2.0
    assert np.array_equal(emb, embs[0])  # the highest-scoring tile's embedding
    one = Preprocess(height=32, width=48)
    assert np.array_equal(reduce(np.array([1.5]), maps[:1], None, one)[1], maps[0])  # untiled: the map as it is


def test_a_tiled_frame_is_standardized_as_a_whole():
    """Exposure is set over the whole frame, then cut: a dark tile stays darker than a bright one."""
    img = np.zeros((64, 512, 3), np.uint8)
    img[:, :256], img[:, 256:] = 60, 180
    pre = replace(TILED, tiles=(1, 2), tile_overlap=0.0, exposure="standardize")
    tiles = cut(prepare(img, pre), pre)
    assert tiles[0].mean() < tiles[1].mean() - 1.0


def test_auto_tiles_long_and_large_images_only():
    strip = plan([(256, 4096)] * 3, BUDGET, "auto", 2.0, 0.125)
    assert strip.pre.tiled and strip.pre.tiles[0] == 1 and strip.whole_shrink == 4.0
    assert strip.shrink <= 2.0 and "tiled" in strip.reason and "4096x256" in strip.reason
    for size in [(300, 400), (128, 128), (301, 319)]:  # seen near full size: never tiled, however few images
        p = plan([size], BUDGET, "auto", 2.0, 0.125)
        assert not p.pre.tiled and "whole images" in p.reason
    huge = plan([(8000, 8000)], BUDGET, "auto", 2.0, 0.125)
    assert huge.pre.n_tiles <= MAX_TILES and "at most" in huge.reason
    # the rule reads a frame's geometry against the input: a short side given by hand keeps long strips whole
    assert not plan([(256, 4096)], Preprocess(short_side=256), "auto", 2.0, 0.125).pre.tiled


def test_tiles_as_set_and_off():
    off = plan([(256, 4096)], BUDGET, "off", 2.0, 0.125)
    assert not off.pre.tiled and off.shrink == 4.0 and off.reason.startswith("tiles=off")
    given = plan([(256, 4096)], BUDGET, "1x8", 2.0, 0.0)
    assert given.pre.tiles == (1, 8) and given.pre.tile_overlap == 0.0
    assert shrink(given.pre, (256, 4096)) == given.shrink < 2.0


def test_tiling_survives_the_manifest_round_trip():
    d = TILED.to_dict()
    assert d["tiles"] == (2, 3) and Preprocess.from_dict({**d, "tiles": [2, 3]}) == TILED  # JSON gives a list
    assert "tiles" not in Preprocess(height=32, width=32).to_dict()  # untiled: readable by earlier versions
    with pytest.raises(ValueError, match="bad tiling"):
        Preprocess(height=32, width=32, tiles=(0, 2))


@pytest.mark.parametrize(
    "value, message",
    [
        ("abc", "tiles must be auto, off or ROWSxCOLS"),
        ("0x4", "at least 1"),
        ("1x40", f"at most {MAX_TILES} tiles"),
    ],
)
def test_bad_tile_settings_are_one_clear_line(value, message):
    with pytest.raises(ValueError, match=message) as e:
        fit_overrides([f"tiles={value}"])
    assert "\n" not in str(e.value) and str(e.value).startswith("tiles:")
    for bad in ("tile_shrink=0.5", "tile_overlap=0.9"):
        with pytest.raises(ValueError) as e:
            fit_overrides([bad])
        assert "\n" not in str(e.value)
    assert FitSettings(tiles="2x3").tiles == "2x3"
