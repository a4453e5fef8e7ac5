"""Long strips made from a real set, to measure tiling where the real line-scan sets are missing (not a test).

Each strip is PER_STRIP images of the set, each resized to SIDE x SIDE, side by side (e.g. 8 x 256 = a 256x2048
strip, the shape of a line-scan frame). Good strips from train/good (fit) and test/good (test); each defect
image becomes one defect strip, placed at a seeded slot among test/good images, its mask likewise. Then
`benchmarks/quality.py` scores the strip set like any other:

    .venv/bin/python benchmarks/strips.py --set magnetic_tile/magnetic_tile --out /tmp/strips
    INSPECTOR_DATASETS=/tmp/strips .venv/bin/python benchmarks/quality.py --methods inspector [--fit tiles=off]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inspector.data.datasets import discover, load_mask  # noqa: E402
from inspector.data.images import load_image  # noqa: E402

DATASETS = Path(os.environ.get("INSPECTOR_DATASETS", ROOT.parent / "shared" / "datasets"))
PER_STRIP, SIDE = 8, 256


def tile(img: np.ndarray) -> np.ndarray:
    return cv2.resize(img, (SIDE, SIDE), interpolation=cv2.INTER_AREA)


def good_strips(paths: list[Path]) -> list[np.ndarray]:
    """Consecutive groups of PER_STRIP images (name order), side by side; a short last group is dropped."""
    groups = [paths[i : i + PER_STRIP] for i in range(0, len(paths) - PER_STRIP + 1, PER_STRIP)]
    return [np.hstack([tile(load_image(p)) for p in g]) for g in groups]


def write(folder: Path, name: str, img: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / name), img)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="magnetic_tile/magnetic_tile", help="<set>/<category> under the data sets")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    ds = discover(DATASETS / a.set)
    root = a.out / "strips" / a.set.replace("/", "_")
    for i, img in enumerate(good_strips(sorted(ds.train))):
        write(root / "train" / "good", f"{i:04d}.png", img)
    test_good = sorted(x.path for x in ds.test if not x.label)
    goods = [tile(load_image(p)) for p in test_good]
    for i, img in enumerate(good_strips(test_good)):
        write(root / "test" / "good", f"{i:04d}.png", img)
    rng = np.random.default_rng(0)
    for i, x in enumerate(s for s in ds.test if s.label):
        slot = int(rng.integers(PER_STRIP))
        others = [goods[int(k)] for k in rng.choice(len(goods), PER_STRIP - 1, replace=False)]
        row = others[:slot] + [tile(load_image(x.path))] + others[slot:]
        kind = x.path.parent.name
        write(root / "test" / kind, f"{i:04d}.png", np.hstack(row))
        mask = np.zeros((SIDE, SIDE * PER_STRIP), np.uint8)
        if x.mask:
            mask[:, slot * SIDE : (slot + 1) * SIDE] = (load_mask(x.mask, (SIDE, SIDE)) > 0) * 255
        write(root / "ground_truth" / kind, f"{i:04d}_mask.png", mask)
    print(f"wrote {root}")


if __name__ == "__main__":
    main()
