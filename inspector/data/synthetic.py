"""Seeded synthetic product images: good parts, and parts with scratches, blobs or missing pieces.

Used by the tests and the demo (never by a real line). A "part" is a textured disc with a bolt-hole
pattern on a brushed background, with small random pose, brightness and noise changes between parts.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

DEFECTS = ("scratch", "blob", "missing")


def good_part(rng: np.random.Generator, size: tuple[int, int] = (96, 96)) -> np.ndarray:
    """One defect-free part, BGR uint8 of `size` (H, W)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bg = 90 + 12 * np.sin(xx * 0.9 + rng.uniform(0, 6.28)) + rng.normal(0, 4, (h, w))
    img = np.dstack([bg, bg * 1.02, bg * 0.97])
    cx, cy = w / 2 + rng.uniform(-1.5, 1.5), h / 2 + rng.uniform(-1.5, 1.5)
    r = 0.36 * min(h, w)
    tone = rng.uniform(170, 185)
    cv2.circle(img, (int(cx), int(cy)), int(r), (tone, tone * 0.98, tone * 0.95), -1, cv2.LINE_AA)
    for k in range(6):
        a = k * np.pi / 3 + rng.uniform(-0.03, 0.03)
        hx, hy = cx + 0.6 * r * np.cos(a), cy + 0.6 * r * np.sin(a)
        cv2.circle(img, (int(hx), int(hy)), max(2, int(0.12 * r)), (60, 60, 60), -1, cv2.LINE_AA)
    cv2.circle(img, (int(cx), int(cy)), max(2, int(0.2 * r)), (40, 40, 40), -1, cv2.LINE_AA)
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def add_defect(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return (defective image, mask uint8 0/255) with one defect of `kind`."""
    h, w = img.shape[:2]
    out, mask = img.copy(), np.zeros((h, w), np.uint8)
    cx, cy, r = w / 2, h / 2, 0.36 * min(h, w)
    a = rng.uniform(0, 2 * np.pi)
    px, py = int(cx + 0.35 * r * np.cos(a)), int(cy + 0.35 * r * np.sin(a))
    if kind == "scratch":
        b = rng.uniform(0, np.pi)
        d = int(0.5 * r)
        p1 = (int(px - d * np.cos(b)), int(py - d * np.sin(b)))
        p2 = (int(px + d * np.cos(b)), int(py + d * np.sin(b)))
        thick = max(1, min(h, w) // 48)
        cv2.line(out, p1, p2, (235, 235, 240), thick, cv2.LINE_AA)
        cv2.line(mask, p1, p2, 255, thick + 1)
    elif kind == "blob":
        axes = (max(2, int(rng.uniform(0.12, 0.2) * r)), max(2, int(rng.uniform(0.08, 0.15) * r)))
        cv2.ellipse(out, (px, py), axes, float(rng.uniform(0, 180)), 0, 360, (45, 70, 95), -1, cv2.LINE_AA)
        cv2.ellipse(mask, (px, py), axes, 0, 0, 360, 255, -1)
    elif kind == "missing":
        ex, ey = int(cx + r * np.cos(a)), int(cy + r * np.sin(a))
        rad = max(3, int(0.3 * r))
        cv2.circle(mask, (ex, ey), rad, 255, -1)
        region = (mask > 0) & (np.linalg.norm(np.dstack(np.mgrid[0:h, 0:w]) - [cy, cx], axis=2) < r + 1)
        mask[:] = np.where(region, 255, 0)
        xx = np.mgrid[0:h, 0:w][1]
        bg = np.clip(90 + 12 * np.sin(xx * 0.9), 0, 255).astype(np.uint8)
        out[region] = np.dstack([bg] * 3)[region]
    else:
        raise ValueError(f"unknown defect kind {kind!r}; one of {DEFECTS}")
    return out, mask


def write_dataset(
    root: Path,
    n_train: int = 60,
    n_test_good: int = 12,
    n_test_defect: int = 6,
    size: tuple[int, int] = (96, 96),
    seed: int = 0,
) -> Path:
    """Write the MVTec-style layout (train/good, test/good, test/<defect>, ground_truth) under root."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for sub in ["train/good", "test/good", *(f"test/{d}" for d in DEFECTS), *(f"ground_truth/{d}" for d in DEFECTS)]:
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        cv2.imwrite(str(root / "train/good" / f"{i:04d}.png"), good_part(rng, size))
    for i in range(n_test_good):
        cv2.imwrite(str(root / "test/good" / f"{i:04d}.png"), good_part(rng, size))
    for kind in DEFECTS:
        for i in range(n_test_defect):
            img, mask = add_defect(good_part(rng, size), kind, rng)
            cv2.imwrite(str(root / "test" / kind / f"{i:04d}.png"), img)
            cv2.imwrite(str(root / "ground_truth" / kind / f"{i:04d}_mask.png"), mask)
    return root


def good_strip(rng: np.random.Generator, size: tuple[int, int] = (128, 2048)) -> np.ndarray:
    """One defect-free line-scan strip of woven fabric, BGR uint8 of `size` (H, W): a fine weave (period ~5 px) that
    resizing to a long network input blurs away, with small phase, brightness and noise changes between strips."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    weave = np.sin(xx * 1.3 + rng.uniform(0, 6.28)) * np.sin(yy * 1.3 + rng.uniform(0, 6.28))
    g = rng.uniform(115, 125) + 35 * weave + rng.normal(0, 5, (h, w))
    return np.clip(np.dstack([g, g * 1.01, g * 0.98]), 0, 255).astype(np.uint8)


def add_slub(img: np.ndarray, rng: np.random.Generator, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A small patch of broken weave (size x size px, set to its own mean brightness) at a random place: (image,
    mask 0/255). Its mean brightness is unchanged, so shrinking the strip (averaging the weave away) hides it."""
    h, w = img.shape[:2]
    out, mask = img.copy(), np.zeros((h, w), np.uint8)
    y, x = int(rng.integers(8, h - 8 - size)), int(rng.integers(8, w - 8 - size))
    patch = out[y : y + size, x : x + size]
    patch[:] = patch.reshape(-1, patch.shape[-1]).mean(0).round().astype(np.uint8)
    mask[y : y + size, x : x + size] = 255
    return out, mask
