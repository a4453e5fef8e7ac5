"""Synthetic defects used by fit's setting selection: each changes the image, and only where its mask says."""

import numpy as np
import pytest

from inspector.data.defects import KINDS, MAKERS, make_defect, perlin
from inspector.data.synthetic import good_part

LARGE = {"draem_large": 0.25}  # covers a large region on purpose (large or global defects)


@pytest.mark.parametrize("kind", list(MAKERS))
@pytest.mark.parametrize("size", [(96, 96), (64, 400)])
def test_defect_masks_cover_every_changed_pixel_and_stay_small(kind, size):
    rng = np.random.default_rng(3)
    for _ in range(25):
        img = good_part(rng, size)
        out, mask = make_defect(img, kind, rng)
        changed = (out != img).any(axis=2)
        assert out.shape == img.shape and out.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert changed.any(), "a defect that changes nothing teaches nothing"
        assert not (changed & (mask == 0)).any(), "a changed pixel outside the mask"
        assert (mask > 0).mean() < LARGE.get(kind, 0.1), "a synthetic defect must be small"
        assert np.abs(out.astype(int) - img.astype(int))[changed].mean() > 5


def test_defects_are_seeded():
    img = good_part(np.random.default_rng(0))
    a = [make_defect(img, k, np.random.default_rng(7)) for k in MAKERS]
    b = [make_defect(img, k, np.random.default_rng(7)) for k in MAKERS]
    assert all((x[0] == y[0]).all() and (x[1] == y[1]).all() for x, y in zip(a, b, strict=True))


def test_perlin_noise_is_smooth_and_zero_on_the_lattice():
    n = perlin((64, 96), (2, 3), np.random.default_rng(0))
    assert n.shape == (64, 96) and abs(n[0, 0]) < 1e-9 and abs(n[32, 32]) < 1e-9 and n.std() > 0.05
    assert np.abs(np.diff(n, axis=1)).max() < 0.1  # neighbouring pixels differ little: a blob, not salt


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown synthetic defect"):
        make_defect(good_part(np.random.default_rng(0)), "dent", np.random.default_rng(0))


def test_judged_kinds_are_known_makers():
    assert set(KINDS) <= set(MAKERS)


def test_a_foreign_texture_differs_from_the_surface_it_covers():
    """DRAEM-style: the region gets another mean level or grain, visible against the part's own texture."""
    rng = np.random.default_rng(5)
    diffs = []
    for _ in range(20):
        img = good_part(rng, (128, 128))
        out, mask = make_defect(img, "draem", rng)
        diffs.append(np.abs(out.astype(int) - img.astype(int))[mask > 0].mean())
    assert min(diffs) > 2 and np.mean(diffs) > 15, "the foreign texture must be visible where it lies"


def test_a_spot_is_small_and_strong():
    rng = np.random.default_rng(6)
    for _ in range(20):
        img = good_part(rng, (200, 200))
        out, mask = make_defect(img, "spot", rng)
        assert 0 < (mask > 0).mean() < 0.005
        assert np.abs(out.astype(int) - img.astype(int))[mask > 0].mean() > 20
