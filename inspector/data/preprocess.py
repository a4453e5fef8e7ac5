"""Image loading and preprocessing in numpy/OpenCV, shared by training and the ONNX runtime.

Both paths call `prepare` so a frame becomes the same tensor whether torch or ONNX Runtime scores it.
Every model has one network input size (H, W), chosen at fit from the median aspect ratio of the
training images: the short side is `short_side` (lowered for long images until the input has at most
`max_pixels` pixels, unless the short side was asked for), the long side the nearest multiple of the
network stride, so a 4096x256 line-scan strip is never squashed into a square. One fixed grid keeps patch
positions comparable between images (the model keeps per-position statistics) and batches simple.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace

import cv2  # OpenCV's pixel limit is set in inspector/__init__.py, before cv2 is first imported
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STRIDE = 32
# What "standardize" maps a frame's intensity mean / spread to when no reference was measured (models fitted before
# `with_exposure_of` existed keep scoring as they were fitted).
EXPOSURE_MEAN, EXPOSURE_STD = 0.45, 0.25
EXPOSURE_MODES = ("none", "standardize")


@dataclass(frozen=True)
class Preprocess:
    """How a frame becomes the network input. Stored in checkpoints and manifests."""

    short_side: int = 256
    max_long_side: int = 4096
    keep_aspect: bool = True
    max_pixels: int = (
        0  # if set, fixed_for lowers short_side (by the stride) until the input has at most this many pixels
    )
    height: int = 0  # fixed network input size; 0 until chosen from the training images
    width: int = 0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    exposure: str = "none"  # "standardize": every frame's intensity mean and spread set alike (gain/offset drift)
    exposure_mean: float = EXPOSURE_MEAN  # what "standardize" sets them to (0..1): the fit images' typical values
    exposure_std: float = EXPOSURE_STD
    # Tiling (inspector.data.tiles): the frame is resized to a canvas of rows x cols network inputs overlapping by
    # `tile_overlap` of a tile, and each tile is one network input; (1, 1) = the whole frame is the input.
    tiles: tuple[int, int] = (1, 1)
    tile_overlap: float = 0.0

    def __post_init__(self) -> None:
        if self.exposure not in EXPOSURE_MODES:  # e.g. a manifest written by a newer version
            raise ValueError(f"unknown exposure mode {self.exposure!r} (known: {', '.join(EXPOSURE_MODES)})")
        if len(self.tiles) != 2 or min(self.tiles) < 1 or not 0 <= self.tile_overlap <= 0.5:
            raise ValueError(f"bad tiling {self.tiles} with overlap {self.tile_overlap} (rows, cols >= 1; 0-0.5)")

    def to_dict(self) -> dict:
        """Untiled, without the tile keys: manifests and checkpoints read by earlier versions stay readable."""
        d = asdict(self)
        if not self.tiled:
            del d["tiles"], d["tile_overlap"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        extra = {"tiles": tuple(d["tiles"])} if "tiles" in d else {}
        return cls(**{**d, "mean": tuple(d["mean"]), "std": tuple(d["std"]), **extra})

    @property
    def tiled(self) -> bool:
        return tuple(self.tiles) != (1, 1)

    @property
    def n_tiles(self) -> int:
        return int(self.tiles[0]) * int(self.tiles[1])

    def tile_step(self) -> tuple[int, int]:
        """Pixels between the starts of neighbouring tiles on the canvas (H, W)."""
        o = self.tile_overlap
        return max(1, round(self.height * (1 - o))), max(1, round(self.width * (1 - o)))

    def frame_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) a frame is resized to: the network input, or for a tiled model the canvas its tiles cover."""
        h, w = self.input_size(height, width)
        if not self.tiled:
            return h, w
        (sy, sx), (r, c) = self.tile_step(), self.tiles
        return h + (r - 1) * sy, w + (c - 1) * sx

    def fixed_for(self, sizes: list[tuple[int, int]]) -> Preprocess:
        """This policy with the input size fixed from the median aspect of (H, W) image sizes."""
        aspect = float(np.median([w / h for h, w in sizes])) if sizes else 1.0
        pre = replace(self, short_side=self.short_side_for(aspect)) if self.max_pixels else self
        h, w = pre.input_size(1000, max(1, round(1000 * aspect)))
        return replace(pre, height=h, width=w)

    def with_exposure_of(self, images: Iterable[np.ndarray]) -> Preprocess:
        """This policy with "standardize" aiming at the product's own typical intensity mean and spread (medians
        over `images`, measured at the network input size as `prepare` measures them).

        Why not one fixed target: every frame still gets the same mean and spread (gain / lamp drift taken out),
        but a low-contrast product keeps its contrast. A fixed spread of 0.25 stretched paper in reflected light
        (spread 0.08) three times, and its small dark impurities drowned in the stretched texture: image AUROC
        0.70 against 0.96 with the product's own spread (docs/quality.md).
        """
        stats = [intensity(_resized(img, self)) for img in images]
        if not stats:
            return self
        mean, spread = np.median(np.asarray(stats), axis=0) / 255
        return replace(self, exposure_mean=float(mean), exposure_std=float(max(spread, 1 / 255)))

    def short_side_for(self, aspect: float) -> int:
        """The largest short side (down from `short_side`, in steps of the stride) whose input at this aspect
        has at most `max_pixels` pixels: a cap on the compute per frame. With 256 and 320x256 pixels, a
        near-square part keeps 256 (320x256 at 4:5), a 1130x460 part becomes 160x384, a 4096x256 strip
        64x1024: aspect kept, never a square."""
        if not self.keep_aspect:
            return self.short_side
        a = max(aspect, 1 / aspect)
        s = self.short_side
        while s > STRIDE and s * _round_stride(s * a, s, self.max_long_side) > self.max_pixels:
            s -= STRIDE
        return s

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Network input (H, W) for a frame of this size: multiples of the stride."""
        if self.height and self.width:
            return self.height, self.width
        s = self.short_side
        if not self.keep_aspect:
            return s, s
        if height <= width:
            long = _round_stride(s * width / height, s, self.max_long_side)
            return s, long
        long = _round_stride(s * height / width, s, self.max_long_side)
        return long, s


def _round_stride(x: float, lo: int, hi: int) -> int:
    return int(min(max(round(x / STRIDE) * STRIDE, lo), hi))


def _resized(img_bgr: np.ndarray, pre: Preprocess) -> np.ndarray:
    """The frame at the network input size (H, W, 3) BGR; tiled: the canvas of its tiles (`frame_size`)."""
    h, w = pre.frame_size(*img_bgr.shape[:2])
    interp = cv2.INTER_AREA if h * w < img_bgr.shape[0] * img_bgr.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(img_bgr, (w, h), interpolation=interp)


def intensity(img_bgr: np.ndarray) -> tuple[float, float]:
    """A frame's intensity mean and spread over all pixels and channels, 0..255."""
    m, s = (v.ravel() for v in cv2.meanStdDev(img_bgr))  # per channel
    mu = float(m.mean())
    return mu, float(np.sqrt(max(float((s**2 + m**2).mean()) - mu**2, 0.0)))


def prepare(img_bgr: np.ndarray, pre: Preprocess) -> np.ndarray:
    """8-bit BGR frame -> normalized float32 CHW RGB tensor at the network input size (tiled: the canvas of its
    tiles; `inspector.data.tiles.cut` cuts it, so exposure is standardized over the whole frame)."""
    resized = _resized(img_bgr, pre)  # (H, W, 3) BGR
    gain, offset = 1 / 255, 0.0  # pixel -> [0, 1]
    if pre.exposure == "standardize":  # one gain and offset for the whole frame: colour balance is kept
        mu, sd = intensity(resized)
        k = pre.exposure_std / max(sd / 255, 1 / 255)
        gain, offset = k / 255, pre.exposure_mean - mu / 255 * k
    # exposure and the network's normalization folded into one multiply-add per value (the per-frame path)
    mean, std = np.asarray(pre.mean, np.float32), np.asarray(pre.std, np.float32)
    x = np.ascontiguousarray(resized.transpose(2, 0, 1)[::-1]).astype(np.float32)  # (3, H, W) RGB
    x *= (gain / std).astype(np.float32)[:, None, None]  # in place on a contiguous array: ~20x faster than
    x += ((offset - mean) / std).astype(np.float32)[:, None, None]  # broadcasting over the strided view
    return x


def overlay(img_bgr: np.ndarray, amap: np.ndarray, vmax: float = 2.0) -> np.ndarray:
    """Blend a normalized anomaly map (1.0 = threshold) over the frame as a JET heat map."""
    h, w = img_bgr.shape[:2]
    m = cv2.resize(amap.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap((np.clip(m / vmax, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(img_bgr, 0.55, heat, 0.45, 0)
