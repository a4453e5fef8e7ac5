"""ONNX Runtime sessions for exported versions: verified load, warm-up, batched runs (no torch).

A loaded version is one immutable `LoadedModel`. The `Scorer` reloads by building a new one completely
(checked, session created, warmed up) and only then swapping its reference, so frames scored meanwhile
use the old model and no frame is dropped or scored by half of each.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from inspector.data.images import load_image, to_bgr8
from inspector.data.preprocess import Preprocess, overlay
from inspector.errors import InspectorError
from inspector.runtime.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, load_verified
from inspector.runtime.providers import CPU, TENSORRT, GpuOptions, provider_options
from inspector.types import FrameResult

log = logging.getLogger(__name__)
KNN_BUDGET_BYTES = 64 << 20  # per graph run, for the kNN distance matrix (see images_per_run)
FP16_TOLERANCE = 0.01  # relative score difference to the CPU's allowed for TensorRT fp16 (1% at the threshold)
SPIN_VAR = "INSPECTOR_ORT_SPIN"  # "1": let ORT's pool threads spin between operators (its own default)

Frame = np.ndarray | str | os.PathLike


@dataclass(frozen=True)
class LoadedModel:
    """One verified, warmed-up version; replaced as a whole on reload."""

    manifest: Manifest
    session: ort.InferenceSession
    preprocess: Preprocess
    stamp: tuple[str, int, int]  # (version name, manifest mtime, graph mtime): a change means reload


def stamp_of(version_dir: Path) -> tuple[str, int, int]:
    """What a reload compares: version name and the manifest's and graph's mtimes (cheap stats)."""
    times = []
    for name in (MANIFEST_FILE, MODEL_FILE):
        try:
            times.append((version_dir / name).stat().st_mtime_ns)
        except FileNotFoundError:
            times.append(-1)
    return version_dir.name, times[0], times[1]


def open_session(
    blob: bytes, m: Manifest, providers: list[str], threads: int = 0, gpu: GpuOptions | None = None
) -> ort.InferenceSession:
    """An ORT session on checked graph bytes; an unloadable or mismatched graph is one clear error."""
    so = ort.SessionOptions()
    so.log_severity_level = 3  # ORT's warnings (e.g. shape ops placed on CPU) are not the user's business
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 0:
        so.intra_op_num_threads = threads
    if os.environ.get(SPIN_VAR, "0") != "1":
        # ORT's pool threads busy-wait for the next operator; on a few cores that CPU is taken from the watcher's
        # decoding, writer and sinks, and from other processes. docs/watcher.md measures both ways.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        sess = ort.InferenceSession(blob, sess_options=so, providers=provider_options(providers, gpu))
    except Exception as e:  # ORT raises several pybind types (InvalidProtobuf, Fail, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise InspectorError(f"{m.model_path} cannot be loaded by ONNX Runtime ({first[:200]}); re-export") from None
    inputs = [i.name for i in sess.get_inputs()]
    outputs = [o.name for o in sess.get_outputs()]
    if m.input_name not in inputs or any(n not in outputs for n in m.output_names):
        raise InspectorError(
            f"{m.model_path} does not match its manifest (inputs {inputs}, outputs {outputs}); re-export"
        )
    if sess.get_providers()[0] != providers[0]:
        log.warning("%s could not start; running on %s", providers[0], sess.get_providers()[0])
    return sess


# Batch sizes planned at load: the watcher scores up to 8 waiting frames in one run (watcher/loop.py BATCH).
WARM_BATCH = 8


def _warm_up(model: LoadedModel) -> None:
    """The first run of each input shape allocates and plans (TensorRT: builds an engine); do it before real frames.
    Every batch size up to WARM_BATCH on CPU and CUDA (the first batch of 8 took 31 ms against 12-18 ms later, and
    a watcher's first round ran at 0.65-0.71x the raw scorer for it); TensorRT only batch 1 (an engine per shape)."""
    s = model.preprocess.short_side
    h, w = model.preprocess.input_size(s, s)
    sizes = [1] if model.session.get_providers()[0] == TENSORRT else range(1, WARM_BATCH + 1)
    for n in sizes:
        model.session.run(None, {model.manifest.input_name: np.zeros((n, 3, h, w), np.float32)})


def _probe(model: LoadedModel, seed: int = 0) -> np.ndarray:
    """Scores of a fixed seeded batch of two noise frames: the same input for every provider."""
    s = model.preprocess.short_side
    h, w = model.preprocess.input_size(s, s)
    x = np.random.default_rng(seed).normal(0, 1, (2, 3, h, w)).astype(np.float32)
    score = model.session.run([model.manifest.output_names[1]], {model.manifest.input_name: x})[0]
    return np.asarray(score, np.float64)


def fp16_parity(fast: np.ndarray, reference: np.ndarray, tolerance: float = FP16_TOLERANCE) -> float | None:
    """None when the fp16 scores are within `tolerance` (relative) of the reference ones, else the worst difference."""
    worst = float(np.max(np.abs(fast - reference) / np.maximum(np.abs(reference), 1e-6)))
    return None if worst <= tolerance else worst


def load_version(
    version_dir: Path, providers: list[str], threads: int = 0, gpu: GpuOptions | None = None
) -> LoadedModel:
    stamp = stamp_of(version_dir)  # taken first: an edit during loading triggers another reload
    m, blob = load_verified(version_dir)
    model = LoadedModel(m, open_session(blob, m, providers, threads, gpu), m.preprocess, stamp)
    _warm_up(model)
    if gpu is not None and gpu.trt_fp16 and model.session.get_providers()[0] == TENSORRT:
        model = _fp16_or_fp32(model, blob, providers, threads, gpu)
    return model


def _fp16_or_fp32(model: LoadedModel, blob: bytes, providers: list[str], threads: int, gpu: GpuOptions) -> LoadedModel:
    """Keep the TensorRT fp16 session only where its scores match the CPU's on this model; else rebuild in fp32."""
    cpu = LoadedModel(model.manifest, open_session(blob, model.manifest, [CPU], threads), model.preprocess, model.stamp)
    worst = fp16_parity(_probe(model), _probe(cpu))
    if worst is None:
        return model
    log.warning(
        "TensorRT fp16 scores differ from the CPU's by %.1f%% (over %.0f%%) on %s: running TensorRT in fp32",
        100 * worst,
        100 * FP16_TOLERANCE,
        model.manifest.version_dir.name,
    )
    fp32 = GpuOptions(**{**gpu.__dict__, "trt_fp16": False})
    model = LoadedModel(
        model.manifest, open_session(blob, model.manifest, providers, threads, fp32), model.preprocess, model.stamp
    )
    _warm_up(model)
    return model


def as_bgr(frame: Frame) -> np.ndarray:
    """A BGR uint8 frame from an OpenCV array (any depth/channels) or an image file path."""
    if isinstance(frame, np.ndarray):
        return to_bgr8(frame)
    if isinstance(frame, (str, os.PathLike)):
        return load_image(frame)
    raise TypeError(f"expected a numpy image or a path, got {type(frame).__name__}")


def images_per_run(m: Manifest, shape: tuple[int, ...], max_batch: int, budget: int | None = None) -> int:
    """How many frames of this input size go through one graph run.

    The kNN builds a (frames * patches, bank) float32 distance matrix: a batch of long line-scan strips
    would ask for gigabytes, so the batch is split to keep that matrix under `budget`.
    """
    ref = m.data.get("reference", {})
    stride, bank = int(ref.get("patch_stride", 8)), int(ref.get("bank_size", 4096))
    per_frame = (shape[-2] // stride) * (shape[-1] // stride) * bank * 4
    if per_frame == 0:  # no kNN term in this model: nothing grows with the batch beyond the frames themselves
        return max(1, max_batch)
    return max(1, min(max_batch, (budget or KNN_BUDGET_BYTES) // per_frame))


Raw = tuple[float, np.ndarray, "np.ndarray | None"]  # (raw score, raw map (H, W), embedding (D,) or None)


def run_batches(model: LoadedModel, tensors: list[np.ndarray], max_batch: int) -> list[Raw]:
    """(raw score, raw map (H, W), embedding) per tensor; equal input sizes go through the graph together.
    The embedding is None for a version exported before the graph had one."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(t.shape, []).append(i)
    out: list[Raw] = [(0.0, np.empty(0), None)] * len(tensors)
    names = [*model.manifest.output_names]
    if model.manifest.embedding_name is not None:
        names.append(model.manifest.embedding_name)
    for shape, idx in groups.items():
        step = images_per_run(model.manifest, shape, max_batch)
        for k in range(0, len(idx), step):
            chunk = idx[k : k + step]
            batch = np.stack([tensors[i] for i in chunk])  # (B, 3, H, W)
            res = model.session.run(names, {model.manifest.input_name: batch})
            amap, score, emb = res[0], res[1], (res[2] if len(res) > 2 else None)
            for j, i in enumerate(chunk):
                out[i] = (float(score[j]), amap[j, 0], None if emb is None else emb[j])  # amap: (B, 1, H, W)
    return out


def to_result(
    img: np.ndarray,
    raw_score: float,
    raw_map: np.ndarray,
    threshold: float,
    want_overlay: bool,
    embedding: np.ndarray | None = None,
) -> FrameResult:
    h, w = img.shape[:2]
    amap = cv2.resize((raw_map / threshold).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return FrameResult(
        score=raw_score / threshold,
        raw_score=raw_score,
        is_anomaly=bool(raw_score >= threshold),
        anomaly_map=amap,
        overlay=overlay(img, amap) if want_overlay else None,
        embedding=embedding,
    )
