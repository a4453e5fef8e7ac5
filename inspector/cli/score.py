"""`inspector score`: score image files, print each score and verdict, optionally save heat-map overlays.

Once a version is `current`, this runs the exported ONNX model exactly as the line will (torch is not
imported). Before the first export it falls back to the torch model in staging/, so a freshly
calibrated model can be tried at once; both print the same thing.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2

from inspector.data.images import load_image
from inspector.errors import ImageError
from inspector.runtime import registry
from inspector.types import FrameResult

log = logging.getLogger(__name__)
CHUNK = 8  # images read and scored together


def expand(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Image files as given, a folder as the images directly in it (by name); errors for folders without any."""
    from inspector.data.datasets import list_images

    out, errors = [], []
    for p in paths:
        if p.is_dir():
            found = list_images(p)
            out += found
            if not found:
                errors.append(f"{p}: a folder with no images in it (png, jpg, bmp, tiff)")
        else:
            out.append(p)
    return out, errors


def score_images(model_dir: Path, images: list[Path], save_map: str | None) -> int:
    """Print `path  1.73x  ANOMALY|ok` per image (folders: each image in them); 0 when all were scored, 1 when
    some were unreadable or a folder held none."""
    model_dir = Path(model_dir)
    images, errors = expand(images)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    out_dir = Path(save_map) if save_map else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    if registry.current_version(model_dir) is not None:
        rows = _score_onnx(model_dir, images, out_dir is not None)
    else:
        rows = _score_torch(model_dir, images, out_dir is not None)
    failed, used = len(errors), set()
    for path, res in rows:
        if isinstance(res, str):
            print(f"error: {res}", file=sys.stderr)
            failed += 1
            continue
        print(f"{path}  {res.score:.2f}x  {'ANOMALY' if res.is_anomaly else 'ok'}", flush=True)
        if out_dir is not None and res.overlay is not None:
            cv2.imwrite(str(_unique(out_dir / f"{path.stem}_map.png", used)), res.overlay)
    return 1 if failed else 0


def _unique(path: Path, used: set[Path]) -> Path:
    """Two inputs with the same name from different folders must not overwrite each other's map."""
    candidate, i = path, 1
    while candidate in used:
        candidate, i = path.with_name(f"{path.stem}_{i}{path.suffix}"), i + 1
    used.add(candidate)
    return candidate


def _read(paths: list[Path]) -> Iterator[tuple[Path, object]]:
    for p in paths:
        try:
            yield p, load_image(p)
        except ImageError as e:
            yield p, str(e)


def _score_onnx(model_dir: Path, images: list[Path], overlay: bool) -> Iterator[tuple[Path, FrameResult | str]]:
    from inspector.runtime import Scorer

    scorer = Scorer.load(model_dir)
    for k in range(0, len(images), CHUNK):
        loaded = list(_read(images[k : k + CHUNK]))
        ok = [(p, img) for p, img in loaded if not isinstance(img, str)]
        results = dict(zip([p for p, _ in ok], scorer.score_batch([img for _, img in ok], overlay=overlay)))
        for p, img in loaded:
            yield p, img if isinstance(img, str) else results[p]


def _score_torch(model_dir: Path, images: list[Path], overlay: bool) -> Iterator[tuple[Path, FrameResult | str]]:
    from inspector.data.datasets import LoadReport
    from inspector.pipeline.checkpoint import CALIBRATION_FILE, check_model_dir, load_model, read_json, staging
    from inspector.pipeline.infer import score_paths
    from inspector.runtime.manifest import check_threshold
    from inspector.runtime.session import to_result

    check_model_dir(model_dir)
    cal = read_json(
        staging(model_dir) / CALIBRATION_FILE, "the model is not calibrated yet: run `inspector calibrate` first"
    )
    threshold = check_threshold(cal.get("threshold"), f"threshold in {staging(model_dir) / CALIBRATION_FILE}")
    net, pre, _ = load_model(model_dir)
    log.info("no exported version is current: scoring with the torch model in staging/ (`inspector export` for ONNX)")
    for k in range(0, len(images), CHUNK):
        loaded = list(_read(images[k : k + CHUNK]))
        readable = [p for p, img in loaded if not isinstance(img, str)]
        scored = {r.path: r for r in score_paths(net, pre, readable, LoadReport(), max_bad_fraction=1.0)}
        for p, img in loaded:
            if isinstance(img, str) or p not in scored:
                yield p, img if isinstance(img, str) else f"{p}: could not be read"
                continue
            r = scored[p]
            yield p, to_result(r.image, r.score, r.amap, threshold, overlay)
