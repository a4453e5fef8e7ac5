"""`Scorer`: the one object production code uses to score frames (torch-free)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inspector.data.images import image_size
from inspector.data.preprocess import Preprocess, prepare
from inspector.data.tiles import cut, reduce
from inspector.errors import InspectorError
from inspector.runtime import registry
from inspector.runtime.manifest import check_threshold
from inspector.runtime.providers import GpuOptions, choose
from inspector.runtime.session import Frame, LoadedModel, as_bgr, load_version, run_batches, stamp_of, to_result
from inspector.types import FrameResult

log = logging.getLogger(__name__)


def _reduce(part: list, pre: Preprocess) -> tuple:
    """One frame's tile results (score, map, embedding) -> the frame's, as `inspector.data.tiles.reduce` says."""
    embs = None if part[0][2] is None else np.stack([e for _, _, e in part])
    return reduce(np.array([s for s, _, _ in part]), np.stack([m for _, m, _ in part]), embs, pre)


class Scorer:
    """Scores frames with one exported version; follows the model folder's `current` on request.

    Scores are normalized so 1.0 is the threshold: the manifest's calibrated one, or a per-call raw
    `threshold` (the watcher's per-source setting) in the same units as `manifest["threshold"]`.
    """

    def __init__(
        self,
        model: LoadedModel,
        model_dir: Path | None,
        providers: list[str],
        threads: int,
        max_batch: int,
        gpu: GpuOptions | None = None,
    ):
        self._model = model
        self._model_dir = model_dir
        self._providers = providers
        self._threads = threads
        self._gpu = gpu
        self.max_batch = max_batch
        self._reload_lock = threading.Lock()
        self._failed: tuple | None = None  # the stamp that failed to load: not retried each frame
        self._unfitted_sizes: set[str] = set()  # frame sizes already warned about

    @classmethod
    def load(
        cls,
        path: str | Path,
        providers: Sequence[str] | None = None,
        threads: int = 0,
        max_batch: int = 8,
        gpu: GpuOptions | None = None,
    ) -> Scorer:
        """Load a version folder, or a model folder's `current` version (then `reload_if_changed` works).

        providers: e.g. ["cuda", "cpu"]; default TensorRT -> CUDA -> CPU (or $INSPECTOR_PROVIDERS).
        gpu: the CUDA and TensorRT providers' options (device, engine cache, fp16).
        """
        version_dir, model_dir = registry.resolve(Path(path))
        wanted = choose(list(providers) if providers is not None else None)
        return cls(load_version(version_dir, wanted, threads, gpu), model_dir, wanted, threads, max(1, max_batch), gpu)

    @property
    def version(self) -> str:
        return self._model.manifest.version_dir.name

    @property
    def threshold(self) -> float:
        """The calibrated threshold in raw model units."""
        return self._model.manifest.threshold

    @property
    def manifest(self) -> dict[str, Any]:
        return self._model.manifest.data

    @property
    def latent(self) -> dict | None:
        """The running version's latent map projection and good cloud (manifest), or None for older exports."""
        return self._model.manifest.latent

    @property
    def fit_image_sizes(self) -> dict[str, int] | None:
        """Formats ("WxH" -> count) of the images the running version was fitted on, when they were few."""
        return self._model.manifest.image_sizes

    @property
    def providers(self) -> list[str]:
        """Execution providers the session actually runs on, best first."""
        return list(self._model.session.get_providers())

    def prepare(self, frame: Frame) -> np.ndarray:
        """The exact network input for a frame: (3, H, W) float32, same function as training (a tiled model: the
        canvas its tiles are cut from, `inspector.data.tiles.cut`)."""
        return prepare(as_bgr(frame), self._model.preprocess)

    def score(self, frame: Frame, overlay: bool = False, threshold: float | None = None) -> FrameResult:
        """Score one BGR frame or image file; an unreadable file raises ImageError naming it."""
        return self.score_batch([frame], overlay, threshold)[0]

    def score_batch(
        self, frames: Sequence[Frame], overlay: bool = False, threshold: float | None = None
    ) -> list[FrameResult]:
        """Score frames together (frames of equal input size share one graph run), in order. A tiled model's frames
        are cut into tiles that go through the graph together and are stitched back per frame (`tiles.reduce`)."""
        model = self._model  # one version for the whole batch, even if a reload swaps meanwhile
        thr = model.manifest.threshold if threshold is None else check_threshold(threshold)
        images = [as_bgr(f) for f in frames]
        self._warn_unfitted_sizes(model, images)
        pre = model.preprocess
        tiles = [cut(prepare(img, pre), pre) for img in images]  # (T, 3, H, W) per frame; untiled T = 1
        raw = run_batches(model, [t for frame in tiles for t in frame], self.max_batch)
        out, k = [], 0
        for img, frame in zip(images, tiles):
            part, k = raw[k : k + len(frame)], k + len(frame)
            score, amap, emb = _reduce(part, pre) if pre.tiled else part[0]
            out.append(to_result(img, score, amap, thr, overlay, emb))
        return out

    def _warn_unfitted_sizes(self, model: LoadedModel, images: list[np.ndarray]) -> None:
        """One warning per frame size no fit image had (a camera or crop change): expect false alarms."""
        fitted = model.manifest.image_sizes
        if not fitted:  # sizes varied per part at fit (or an older manifest): nothing to compare with
            return
        for size in {image_size(img) for img in images} - set(fitted) - self._unfitted_sizes:
            self._unfitted_sizes.add(size)
            log.warning(
                "frame size %s: no fit image had this size (fitted: %s); expect more false alarms "
                "until the model is fitted on this format",
                size,
                ", ".join(fitted),
            )

    def reload_if_changed(self) -> bool:
        """Swap to the version `current` names now (or a re-edited manifest); True when swapped.

        Cheap when nothing changed (one readlink, one stat), so a loop can call it between frames.
        A version that fails to load is logged once and the running model is kept.
        """
        if self._model_dir is None or not self._reload_lock.acquire(blocking=False):
            return False
        try:
            try:
                version_dir, _ = registry.resolve(self._model_dir)
            except InspectorError as e:
                return self._keep(("?", str(e)), e)
            stamp = stamp_of(version_dir)
            if stamp == self._model.stamp or stamp == self._failed:
                return False
            try:
                new = load_version(version_dir, self._providers, self._threads, self._gpu)
            except InspectorError as e:
                return self._keep(stamp, e)
            old, self._model, self._failed = self._model.stamp[0], new, None
            log.info("model reloaded: %s -> %s", old, new.stamp[0])
            return True
        finally:
            self._reload_lock.release()

    def _keep(self, stamp: tuple, err: InspectorError) -> bool:
        if stamp != self._failed:
            log.error("keeping model %s: %s", self.version, err)
            self._failed = stamp
        return False
