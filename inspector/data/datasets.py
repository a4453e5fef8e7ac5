"""Datasets on disk: a folder of good images, or the MVTec-style layout.

Layout: train/good, test/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png.
"""

from __future__ import annotations

import logging
import re
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inspector.data.images import load_image
from inspector.data.preprocess import IMAGE_SUFFIXES
from inspector.errors import ImageError, InspectorError

log = logging.getLogger(__name__)
MAX_FORMATS = 8  # more distinct image sizes than this: sizes vary per part, not a few camera formats


def image_formats(sizes: Sequence[str]) -> dict[str, int] | None:
    """Images per size ("WxH") when they come in a few camera formats; None when sizes vary per part."""
    counts = Counter(sizes)
    return dict(sorted(counts.items())) if len(counts) <= MAX_FORMATS else None


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 0 good, 1 defect
    defect: str = "good"
    mask: Path | None = None


@dataclass
class Dataset:
    root: Path
    train: list[Path]
    test: list[Sample] = field(default_factory=list)

    @property
    def has_defects(self) -> bool:
        return any(s.label for s in self.test)


def name_order(p: Path) -> list:
    """Sort key reading digit runs as numbers: cam_9.png before cam_10.png, as a counter or timestamp runs."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def discover(root: str | Path) -> Dataset:
    """Find the good training images and any labelled test images under `root`."""
    root = Path(root)
    if not root.exists():
        raise InspectorError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise InspectorError(f"{root} is not a folder: give a folder of good images or a dataset root")
    train_dir = root / "train" / "good"
    if not train_dir.is_dir():
        train = list_images(root)
        if not train:
            raise InspectorError(f"no images (png, jpg, bmp, tiff) in {root}")
        return Dataset(root, train)
    train = list_images(train_dir)
    if not train:
        raise InspectorError(f"no images (png, jpg, bmp, tiff) in {train_dir}")
    return Dataset(root, train, _test_samples(root))


def _test_samples(root: Path) -> list[Sample]:
    test_dir = root / "test"
    if not test_dir.is_dir():
        return []
    samples: list[Sample] = []
    for sub in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        good = sub.name == "good"
        for img in list_images(sub):
            mask = None if good else root / "ground_truth" / sub.name / f"{img.stem}_mask.png"
            mask = mask if mask is not None and mask.is_file() else None
            samples.append(Sample(img, 0 if good else 1, sub.name, mask))
    return samples


@dataclass
class LoadReport:
    total: int = 0
    bad: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        names = ", ".join(p.name for p, _ in self.bad[:5]) + (" ..." if len(self.bad) > 5 else "")
        return f"skipped {len(self.bad)} of {self.total} unreadable images: {names}"


def iter_images(
    paths: Sequence[Path], report: LoadReport, max_bad_fraction: float = 0.1, threads: int = 2
) -> Iterator[tuple[Path, np.ndarray]]:
    """Yield (path, BGR image), skipping unreadable files; abort when too many are bad."""
    report.total += len(paths)

    def _load(p: Path) -> tuple[Path, np.ndarray | str]:
        try:
            return p, load_image(p)
        except ImageError as e:
            return p, str(e)

    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for p in paths:  # read ahead a few images only: large images must not pile up in memory
            pending.append(pool.submit(_load, p))
            if len(pending) > 2 * threads:
                yield from _checked(pending.popleft().result(), report, max_bad_fraction)
        while pending:
            yield from _checked(pending.popleft().result(), report, max_bad_fraction)


def _checked(item: tuple[Path, np.ndarray | str], report: LoadReport, max_bad_fraction: float):
    p, img = item
    if isinstance(img, str):
        report.bad.append((p, img))
        log.warning("skipping %s", img)
        if len(report.bad) > max_bad_fraction * max(report.total, 1):
            raise InspectorError(
                f"{len(report.bad)} of {report.total} images are unreadable "
                f"(more than {max_bad_fraction:.0%}); first: {report.bad[0][1]}"
            )
        return
    yield p, img


def load_mask(path: Path | None, shape: tuple[int, int]) -> np.ndarray:
    """Binary mask (H, W) uint8 resized to `shape`; zeros when there is none."""
    import cv2

    if path is None:
        return np.zeros(shape, np.uint8)
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise InspectorError(f"cannot read mask {path}")
    return (cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 127).astype(np.uint8)
