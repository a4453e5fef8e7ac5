"""Images served from the store's media folder only: no path traversal, no symlink escape, images only.

Every path (from a URL or from a row) goes through `safe_path`, which refuses absolute paths and `..`
segments outright and then checks that the fully resolved file (symlinks followed) still lies inside
the resolved media folder. Thumbnails and heat maps are rendered on demand and cached in memory.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

IMAGE_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}
BROWSER_CANNOT_SHOW = {".tif", ".tiff"}  # converted to PNG on the way out
MAX_HEATMAP_SIDE = 2048
_DRIVE = re.compile(r"^[A-Za-z]:")


class Refused(Exception):
    """The requested path is not a servable image inside the media folder (answered 404, no detail)."""


def safe_path(root: Path, rel: str, suffixes: set[str] | None = None) -> Path:
    """The file `rel` inside `root`, or Refused. `rel` uses '/' separators, as the store records it."""
    if not rel or "\x00" in rel or "\\" in rel or rel.startswith("/") or _DRIVE.match(rel):
        raise Refused(rel)
    parts = PurePosixPath(rel).parts
    if any(p in ("..", ".") for p in parts) or any(p.startswith(".") for p in parts):
        raise Refused(rel)
    allowed = IMAGE_TYPES.keys() if suffixes is None else suffixes
    if PurePosixPath(rel).suffix.lower() not in allowed:
        raise Refused(rel)
    base = root.resolve()
    try:
        target = (base / Path(*parts)).resolve(strict=True)
    except (OSError, RuntimeError):  # missing file, symlink loop
        raise Refused(rel) from None
    if not target.is_relative_to(base) or not target.is_file():
        raise Refused(rel)
    return target


def _stamp(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_mtime_ns, st.st_size


def thumbnail(path: Path, width: int, height: int, target: int = 360) -> bytes:
    """A JPEG no wider or taller than `target` px; JPEGs decode at reduced size (much faster)."""
    return _thumbnail(_stamp(path), width, height, target)


@functools.lru_cache(maxsize=1024)
def _thumbnail(stamp: tuple[str, int, int], width: int, height: int, target: int) -> bytes:
    factor = max(f for f in (1, 2, 4, 8) if max(width, height) / f >= target or f == 1)
    flag = {
        1: cv2.IMREAD_COLOR,
        2: cv2.IMREAD_REDUCED_COLOR_2,
        4: cv2.IMREAD_REDUCED_COLOR_4,
        8: cv2.IMREAD_REDUCED_COLOR_8,
    }[factor]
    img = cv2.imread(stamp[0], flag)
    if img is None:
        raise Refused(stamp[0])
    scale = target / max(img.shape[:2])
    if scale < 1:
        img = cv2.resize(
            img, (max(int(img.shape[1] * scale), 1), max(int(img.shape[0] * scale), 1)), interpolation=cv2.INTER_AREA
        )
    return _encode(img, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 82])


def as_png(path: Path) -> bytes:
    """Images a browser cannot display (TIFF) as PNG, keeping 16-bit depth out of the browser's way."""
    return _as_png(_stamp(path))


@functools.lru_cache(maxsize=2)  # originals can be huge: keep only the one being looked at
def _as_png(stamp: tuple[str, int, int]) -> bytes:
    img = cv2.imread(stamp[0], cv2.IMREAD_COLOR)
    if img is None:
        raise Refused(stamp[0])
    return _encode(img, ".png", [])


def heatmap_png(path: Path, width: int, height: int, vmax: float = 2.0) -> bytes:
    """The saved anomaly map (.npy, 1.0 = threshold) as a JET heat map at the frame's size."""
    return _heatmap(_stamp(path), width, height, vmax)


@functools.lru_cache(maxsize=16)
def _heatmap(stamp: tuple[str, int, int], width: int, height: int, vmax: float) -> bytes:
    try:
        amap = np.load(stamp[0], allow_pickle=False)
    except (OSError, ValueError):
        raise Refused(stamp[0]) from None
    if amap.ndim != 2 or amap.size == 0:
        raise Refused(stamp[0])
    scale = min(1.0, MAX_HEATMAP_SIDE / max(width, height, 1))  # a map is coarse: more pixels show nothing new
    size = (max(int(width * scale), 1), max(int(height * scale), 1))
    m = cv2.resize(np.nan_to_num(amap.astype(np.float32)), size, interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap((np.clip(m / vmax, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return _encode(heat, ".png", [])


def _encode(img: np.ndarray, ext: str, params: list[int]) -> bytes:
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise Refused(ext)
    return buf.tobytes()
