"""Synthetic defects made on a user's own good images, to judge fit settings without labelled defects.

`fit` has good images only. To tell which candidate setting separates defects from good parts on *this*
product, it damages its held-out good images in three generic ways (as DRAEM and CutPaste train on them)
and measures how well each candidate ranks the damaged copies above the originals:

- cut-paste: a small patch of the same image, flipped or turned and with a brightness change, pasted
  elsewhere (a foreign particle, a misplaced structure);
- blob: a Perlin-noise-shaped region filled with the image's own texture from elsewhere, blended (stains,
  pitting, missing coating);
- scratch: a thin curved line, brighter or darker than the surface (cracks, scratches).

Studied as judges (`benchmarks/judge.py`), not in `KINDS` unless they win there:

- draem: a Perlin-shaped region filled with a *foreign* texture (smoothed noise at a shifted intensity) laid over
  the surface with some opacity, as DRAEM does with its texture set; `draem_large` the same over a larger region
  (large or global defects: uneven surfaces, breaks);
- spot: a small dark or bright spot (dirt, a pit, a bubble).

Every maker returns the image and a 0/255 mask that covers every pixel it changed. Sizes are fractions of
the image's short side, so a defect is small on a large image too. Seeded: the same rng gives the same
defects.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

KINDS = ("cutpaste", "blob", "scratch")


def perlin(shape: tuple[int, int], periods: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D Perlin gradient noise in about [-0.7, 0.7], (H, W), with `periods` lattice cells along each axis."""
    ph, pw = periods
    h, w = shape
    hh, ww = -(-h // ph) * ph, -(-w // pw) * pw  # whole lattice cells, cropped at the end
    angles = rng.uniform(0, 2 * np.pi, (ph + 1, pw + 1))
    grad = np.stack([np.cos(angles), np.sin(angles)], -1)
    ys, xs = np.mgrid[0:hh, 0:ww].astype(np.float64)
    ys, xs = ys * ph / hh, xs * pw / ww
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = ys - y0, xs - x0

    def dot(dy: int, dx: int) -> np.ndarray:
        g = grad[y0 + dy, x0 + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    fade = lambda t: 6 * t**5 - 15 * t**4 + 10 * t**3  # noqa: E731
    uy, ux = fade(fy), fade(fx)
    top = dot(0, 0) * (1 - ux) + dot(0, 1) * ux
    bottom = dot(1, 0) * (1 - ux) + dot(1, 1) * ux
    return (top * (1 - uy) + bottom * uy)[:h, :w]


def _box(img: np.ndarray, rng: np.random.Generator, lo: float, hi: float) -> tuple[int, int, int, int]:
    """A random (y, x, h, w) box inside the image, sides lo..hi of its short side."""
    h, w = img.shape[:2]
    short = min(h, w)
    bh, bw = (max(3, int(short * rng.uniform(lo, hi))) for _ in range(2))
    bh, bw = min(bh, h), min(bw, w)
    return int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1)), bh, bw


def _contrast(rng: np.random.Generator) -> float:
    """A signed intensity change: noticeable, not glaring (20..70 grey levels)."""
    return float(rng.choice([-1, 1]) * rng.uniform(20, 70))


def cut_paste(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A patch of the image, flipped/turned and shifted in brightness, pasted elsewhere."""
    out, mask = img.copy(), np.zeros(img.shape[:2], np.uint8)
    sy, sx, bh, bw = _box(img, rng, 0.04, 0.12)
    patch = img[sy : sy + bh, sx : sx + bw].astype(np.float32)
    patch = np.flip(patch, axis=int(rng.integers(0, 2)))
    patch = np.clip(patch + _contrast(rng) * 0.5, 0, 255).astype(np.uint8)
    dy, dx, _, _ = _box(img, rng, 0.04, 0.12)
    dy, dx = min(dy, img.shape[0] - bh), min(dx, img.shape[1] - bw)
    out[dy : dy + bh, dx : dx + bw] = patch
    mask[dy : dy + bh, dx : dx + bw] = 255
    return out, mask


def blob(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A Perlin-shaped region inside a small box, filled with texture from elsewhere and shifted in brightness."""
    out = img.copy()
    y, x, bh, bw = _box(img, rng, 0.08, 0.22)
    noise = perlin((bh, bw), (int(rng.integers(1, 4)), int(rng.integers(1, 4))), rng)
    yy, xx = np.mgrid[0:bh, 0:bw]
    window = 1 - ((yy - bh / 2) / (bh / 2)) ** 2 - ((xx - bw / 2) / (bw / 2)) ** 2  # an ellipse: no boxy edges
    region = (noise + 0.5 * window > 0.35) & (window > 0)
    if not region.any():
        region[bh // 2, bw // 2] = True
    sy, sx, _, _ = _box(img, rng, bh / min(img.shape[:2]), bh / min(img.shape[:2]))
    sy, sx = min(sy, img.shape[0] - bh), min(sx, img.shape[1] - bw)
    source = img[sy : sy + bh, sx : sx + bw].astype(np.float32) + _contrast(rng)
    alpha = rng.uniform(0.5, 1.0)
    area = out[y : y + bh, x : x + bw].astype(np.float32)
    mixed = np.clip((1 - alpha) * area + alpha * source, 0, 255).astype(np.uint8)
    view = out[y : y + bh, x : x + bw]
    view[region] = mixed[region]
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[y : y + bh, x : x + bw][region] = 255
    return out, mask


def scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A thin curved line (a quadratic Bezier), brighter or darker than what it crosses."""
    h, w = img.shape[:2]
    short = min(h, w)
    length = short * rng.uniform(0.15, 0.4)
    p0 = np.array([rng.uniform(0, w), rng.uniform(0, h)])
    angle = rng.uniform(0, 2 * np.pi)
    p2 = p0 + length * np.array([np.cos(angle), np.sin(angle)])
    p1 = (p0 + p2) / 2 + rng.normal(0, length * 0.2, 2)
    t = np.linspace(0, 1, 32)[:, None]
    pts = ((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2).round().astype(np.int32)
    mask = np.zeros((h, w), np.uint8)
    cv2.polylines(mask, [pts], False, 255, max(1, round(short / 150)), lineType=cv2.LINE_8)
    if not mask.any():  # the curve left the image: put a short one through its middle
        cv2.line(mask, (w // 4, h // 2), (3 * w // 4, h // 2), 255, 1)
    out = img.copy()
    on = mask > 0
    out[on] = np.clip(out[on].astype(np.float32) + _contrast(rng) * 1.5, 0, 255).astype(np.uint8)
    return out, mask


def _perlin_region(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A Perlin-shaped boolean region in an (h, w) box, kept off the box's edges by an ellipse; never empty."""
    noise = perlin((h, w), (int(rng.integers(1, 4)), int(rng.integers(1, 4))), rng)
    yy, xx = np.mgrid[0:h, 0:w]
    window = 1 - ((yy - h / 2) / (h / 2)) ** 2 - ((xx - w / 2) / (w / 2)) ** 2  # an ellipse: no boxy edges
    region = (noise + 0.5 * window > 0.35) & (window > 0)
    if not region.any():
        region[h // 2, w // 2] = True
    return region


def _foreign(img: np.ndarray, rng: np.random.Generator, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed noise at a shifted intensity over a Perlin region, blended with opacity 0.4..1 (DRAEM-style)."""
    out = img.copy()
    y, x, bh, bw = _box(img, rng, lo, hi)
    region = _perlin_region(bh, bw, rng)
    area = out[y : y + bh, x : x + bw].astype(np.float32)
    grain = max(1, int(min(bh, bw) * rng.uniform(0.02, 0.15))) * 2 + 1  # odd blur size: the texture's grain
    noise = cv2.GaussianBlur(rng.normal(0, 1, area.shape).astype(np.float32), (grain, grain), 0)
    noise *= rng.uniform(10, 40) / max(float(noise.std()), 1e-6)
    level = float(area[region].mean()) + _contrast(rng)  # a different material: another mean, another grain
    texture = level + noise
    alpha = rng.uniform(0.4, 1.0)
    mixed = np.clip((1 - alpha) * area + alpha * texture, 0, 255).astype(np.uint8)
    out[y : y + bh, x : x + bw][region] = mixed[region]
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[y : y + bh, x : x + bw][region] = 255
    return out, mask


def draem(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A foreign texture over a Perlin region 8..25% of the short side."""
    return _foreign(img, rng, 0.08, 0.25)


def draem_large(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A foreign texture over a Perlin region 30..60% of the short side (large or global defects)."""
    return _foreign(img, rng, 0.3, 0.6)


def spot(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A small filled ellipse 1..4% of the short side, darker or brighter by 40..90 grey levels."""
    h, w = img.shape[:2]
    short = min(h, w)
    axes = tuple(max(1, int(short * rng.uniform(0.005, 0.02))) for _ in range(2))
    centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    out = img.copy()
    on = mask > 0
    delta = float(rng.choice([-1, 1]) * rng.uniform(40, 90))
    out[on] = np.clip(out[on].astype(np.float32) + delta, 0, 255).astype(np.uint8)
    return out, mask


MAKERS: dict[str, Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    "cutpaste": cut_paste,
    "blob": blob,
    "scratch": scratch,
    "draem": draem,
    "draem_large": draem_large,
    "spot": spot,
}


def make_defect(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(damaged copy of a BGR uint8 image, mask 0/255 covering every changed pixel) for one defect kind."""
    if kind not in MAKERS:
        raise ValueError(f"unknown synthetic defect {kind!r} (known: {', '.join(MAKERS)})")
    return MAKERS[kind](img, rng)
