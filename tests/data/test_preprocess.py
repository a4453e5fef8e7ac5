import cv2
import numpy as np
import pytest

from inspector.data.images import load_image, to_bgr8
from inspector.data.preprocess import Preprocess, prepare
from inspector.errors import ImageError


def test_keep_aspect_does_not_squash_line_scan_strips():
    pre = Preprocess(short_side=256)
    assert pre.input_size(256, 4096) == (256, 4096)
    assert pre.input_size(460, 1130) == (256, 640)  # 2.46:1 stays ~2.5:1
    assert pre.input_size(1000, 500) == (512, 256)
    assert Preprocess(short_side=256, keep_aspect=False).input_size(256, 4096) == (256, 256)


def test_long_side_is_capped_and_a_multiple_of_32():
    h, w = Preprocess(short_side=256, max_long_side=1024).input_size(100, 100000)
    assert (h, w) == (256, 1024)
    assert Preprocess(short_side=64).input_size(50, 77)[1] % 32 == 0


@pytest.mark.parametrize(
    "img",
    [
        np.full((20, 30), 128, np.uint8),
        np.full((20, 30, 1), 128, np.uint8),
        np.full((20, 30, 4), 128, np.uint8),
        np.full((20, 30, 3), 128 * 257, np.uint16),
        np.full((20, 30), 0.5, np.float32),
    ],
)
def test_images_are_converted_to_bgr8(img):
    out = to_bgr8(img)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8


def test_16bit_keeps_intensity():
    assert to_bgr8(np.full((4, 4), 40000, np.uint16))[0, 0, 0] == 40000 >> 8


def test_prepare_normalizes_to_chw():
    img = np.zeros((100, 300, 3), np.uint8)
    x = prepare(img, Preprocess(short_side=64))
    assert x.shape == (3, 64, 192) and x.dtype == np.float32
    assert np.allclose(x[0], -0.485 / 0.229, atol=1e-5)


def test_exposure_standardize_takes_out_camera_gain_and_offset():
    rng = np.random.default_rng(0)
    part = rng.uniform(40, 110, (64, 96, 3))
    part[20:30, 40:60] = 20  # a dark defect stays a dark defect
    dim, bright = part.astype(np.uint8), np.clip(part * 1.8 + 25, 0, 255).astype(np.uint8)
    pre = Preprocess(short_side=64, exposure="standardize")
    a, b = prepare(dim, pre), prepare(bright, pre)
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()  # same part under other exposure: near-identical input
    plain = Preprocess(short_side=64)
    assert np.abs(prepare(dim, plain) - prepare(bright, plain)).mean() > 1.0  # without it the network sees the drift
    assert a[:, 20:30, 40:60].mean() < a.mean() - 1.0
    flat = prepare(np.full((64, 64, 3), 77, np.uint8), pre)  # a blank frame: no division by zero
    assert np.isfinite(flat).all()
    with pytest.raises(ValueError, match="exposure"):
        Preprocess(exposure="auto")


def test_exposure_standardize_aims_at_the_products_own_level():
    """A typical frame of the product passes unchanged; another exposure of it is mapped back to the same
    input; a low-contrast product keeps its low contrast (a fixed target stretched it threefold)."""
    rng = np.random.default_rng(1)
    parts = [np.clip(rng.normal(175, 20, (64, 64, 3)), 0, 255).astype(np.uint8) for _ in range(5)]
    pre = Preprocess(short_side=64, exposure="standardize").with_exposure_of(parts)
    assert pre.exposure_mean == pytest.approx(175 / 255, abs=0.01)
    assert pre.exposure_std == pytest.approx(20 / 255, abs=0.01)
    plain = Preprocess(short_side=64)
    assert np.abs(prepare(parts[0], pre) - prepare(parts[0], plain)).max() < 0.1  # the typical frame: as it is
    darker = (parts[0] * 0.7).astype(np.uint8)
    assert np.abs(prepare(darker, pre) - prepare(parts[0], pre)).mean() < 0.05  # drift taken out
    fixed = Preprocess(short_side=64, exposure="standardize")  # no reference: the old fixed target
    assert prepare(parts[0], fixed).std() > 2.5 * prepare(parts[0], pre).std()
    assert Preprocess.from_dict(pre.to_dict()) == pre  # stored with the model
    assert Preprocess.from_dict({k: v for k, v in fixed.to_dict().items() if "exposure_" not in k}) == fixed


def test_load_image_errors(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "text.png"
    text.write_text("not an image")
    trunc = tmp_path / "trunc.jpg"
    ok, buf = cv2.imencode(".jpg", np.full((64, 64, 3), 100, np.uint8))
    trunc.write_bytes(buf.tobytes()[:40])
    for p, words in [
        (empty, "empty"),
        (text, "not a readable image"),
        (trunc, "not a readable image"),
        (tmp_path / "missing.png", "no such file"),
    ]:
        with pytest.raises(ImageError, match=words):
            load_image(p)


def test_load_image_reads_16bit_gray_png(tmp_path):
    p = tmp_path / "g16.png"
    cv2.imwrite(str(p), np.full((10, 12), 65535, np.uint16))
    img = load_image(p)
    assert img.shape == (10, 12, 3) and img.max() == 255


def test_long_images_get_a_smaller_short_side_within_the_pixel_cap():
    def hw(pre, sizes):
        p = pre.fixed_for(sizes)
        return p.height, p.width

    cap = Preprocess(short_side=256, max_pixels=320 * 256)
    assert hw(cap, [(460, 1130)] * 3) == (160, 384)  # BSData ball screw: 2.46:1 kept, 5/8 the short side
    assert hw(cap, [(256, 4096)]) == (64, 1024)  # a line-scan strip: never squashed
    assert hw(cap, [(100, 100)]) == (256, 256)
    assert hw(cap, [(320, 250)]) == (320, 256)  # near-square: exactly at the cap, short side kept
    assert hw(Preprocess(short_side=256), [(460, 1130)]) == (256, 640)  # no cap (an explicit short side)
    assert hw(Preprocess(short_side=256, max_pixels=1, keep_aspect=False), [(460, 1130)]) == (256, 256)
