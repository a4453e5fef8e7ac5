"""The one image reader (fit, calibrate, score, the watcher): size limits from the header, truncation, then
decode, then 8-bit BGR.

`inspector/__init__.py` caps OpenCV's decoder (OPENCV_IO_MAX_IMAGE_PIXELS), but its error cannot say why.
Reading the dimensions from the header first gives a clear reason ("20000x20000 is over the limit")
without allocating anything, and catches truncated JPEG/PNG files that OpenCV would decode into a
half-grey frame with only a warning.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2  # OpenCV's pixel limit is set in inspector/__init__.py, before cv2 is first imported
import numpy as np

from inspector.errors import ImageError

MAX_PIXELS = 1 << 27  # OpenCV's own cap (inspector/__init__.py); the watcher sets its own per source
MAX_BYTES = 1 << 30


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, BMP or TIFF header, or None when not recognised."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        i += 2 + length
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    e = "<" if data[:2] == b"II" else ">"
    try:
        off = struct.unpack(e + "I", data[4:8])[0]
        n = struct.unpack(e + "H", data[off : off + 2])[0]
        dims = {}
        for k in range(n):
            tag, typ = struct.unpack(e + "HH", data[off + 2 + 12 * k : off + 6 + 12 * k])
            if tag in (256, 257):
                raw = data[off + 10 + 12 * k : off + 14 + 12 * k]
                dims[tag] = struct.unpack(e + ("H" if typ == 3 else "I"), raw[:2] if typ == 3 else raw)[0]
        return (dims[256], dims[257]) if len(dims) == 2 else None
    except (struct.error, KeyError):
        return None


def truncation(data: bytes) -> str | None:
    """Why a JPEG/PNG file is incomplete, or None. Trailing zero padding after the end marker is allowed."""
    tail = data.rstrip(b"\x00")
    if data[:2] == b"\xff\xd8" and not tail.endswith(b"\xff\xd9"):
        return "truncated JPEG (no end-of-image marker)"
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in tail[-12:]:
        return "truncated PNG (no IEND chunk)"
    return None


def read_image(path: Path, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES) -> tuple[np.ndarray, bytes]:
    """The file as 8-bit BGR plus its bytes (kept for the store); ImageError with the reason otherwise."""
    try:
        size = path.stat().st_size
        if size == 0:
            raise ImageError("file is empty")
        if size > max_bytes:
            raise ImageError(f"file is {size / 2**20:.0f} MB, over the {max_bytes / 2**20:.0f} MB limit")
        data = path.read_bytes()
    except PermissionError:
        raise ImageError("permission denied (cannot read the file)") from None
    except OSError as e:
        raise ImageError(f"cannot read ({e.strerror})") from None
    dims = header_size(data)
    if dims is None:
        raise ImageError("not a readable image: not a PNG, JPEG, BMP or TIFF image")
    if dims[0] * dims[1] > max_pixels:
        raise ImageError(f"{dims[0]}x{dims[1]} pixels is over the {max_pixels} pixel limit")
    reason = truncation(data)
    if reason:
        raise ImageError(f"not a readable image: {reason}")
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None  # OpenCV raises for images above OPENCV_IO_MAX_IMAGE_PIXELS
    if img is None:
        raise ImageError("not a readable image (corrupt or unsupported variant)")
    return to_bgr8(img), data


def load_image(path: str | Path) -> np.ndarray:
    """An image file as 8-bit BGR, or an ImageError naming the file and the reason."""
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"{p}: no such file")
    try:
        return read_image(p)[0]
    except ImageError as e:
        raise ImageError(f"{p}: {e}") from None


def to_bgr8(img: np.ndarray) -> np.ndarray:
    """Convert gray, RGBA, 16-bit or float images to 3-channel 8-bit BGR."""
    if img is None or img.size == 0:
        raise ImageError("empty image")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        img = np.nan_to_num((img - lo) * scale).clip(0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageError(f"unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    raise ImageError(f"unsupported image shape {img.shape}")


def image_size(img: np.ndarray) -> str:
    """ "WxH" of an image, the way camera formats are named."""
    return f"{img.shape[1]}x{img.shape[0]}"
