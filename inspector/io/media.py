"""Images and heat maps of flagged items, saved next to the store before their row is committed.

File names derive from the frame key, so a retry after a crash rewrites the same files instead of
leaving a second copy, and a committed row always points at complete files (write to a temp name,
then rename).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

from inspector.files import atomic_write


@dataclass(frozen=True)
class MediaPaths:
    image: str  # relative to the media folder
    overlay: str
    map: str | None


def media_paths(source: str, frame_key: str, created_at: datetime, image_ext: str, with_map: bool) -> MediaPaths:
    """Relative paths: <source>/<YYYY-MM-DD>/<key>.<ext> keeps folders small and browsable."""
    base = f"{source}/{created_at:%Y-%m-%d}/{frame_key[:24]}"
    return MediaPaths(f"{base}{image_ext.lower()}", f"{base}.overlay.jpg", f"{base}.map.npy" if with_map else None)


def save_media(
    media_dir: Path, paths: MediaPaths, image: bytes | np.ndarray, overlay: np.ndarray, amap: np.ndarray | None
) -> None:
    """Write the original image (file bytes as received, or an encoded camera frame), overlay, map. On an OSError
    (disk full, folder gone) what was written of them is removed again before it is raised: all or nothing."""
    written: list[Path] = []
    try:
        if isinstance(image, np.ndarray):
            image = _encode(image, Path(paths.image).suffix, quality=95)
        written.append(atomic_write(media_dir / paths.image, image))
        written.append(atomic_write(media_dir / paths.overlay, _encode(overlay, ".jpg", quality=90)))
        if paths.map is not None and amap is not None:
            buf = io.BytesIO()
            np.save(buf, amap.astype(np.float16))
            written.append(atomic_write(media_dir / paths.map, buf.getvalue()))
    except OSError:
        for f in written:
            _unlink_quietly(f)
        raise


def _encode(img: np.ndarray, ext: str, quality: int) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise OSError(f"cannot encode image as {ext}")
    return buf.tobytes()


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
