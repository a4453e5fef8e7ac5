"""`inspector export`: the fitted, calibrated torch model -> a new version folder `v<N>/`.

One ONNX graph maps a normalized image batch (dynamic batch at the model's one input size) to the raw
anomaly map and image score; backbone, autoencoder, the score terms in use and smoothing are all
inside, the reference statistics as graph constants. The threshold stays out of the graph, in
`manifest.json`, so sensitivity can change without re-exporting. Before the version is published, a
parity check runs the same frames through torch and ONNX Runtime and refuses the export if any score
differs by more than PARITY_TOLERANCE of the threshold.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import shutil
import time
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from inspector.data.images import load_image
from inspector.data.preprocess import Preprocess, prepare
from inspector.data.tiles import cut
from inspector.errors import ImageError, InspectorError
from inspector.files import atomic_write_json
from inspector.model.embedding import EmbeddedNet
from inspector.model.net import InspectorNet
from inspector.pipeline.checkpoint import CALIBRATION_FILE, FIT_FILE, check_model_dir, load_model, read_json, staging
from inspector.pipeline.latent import fit_latent_space
from inspector.runtime import registry
from inspector.runtime.manifest import FORMAT_VERSION, MANIFEST_FILE, MODEL_FILE, check_threshold, load_verified

log = logging.getLogger(__name__)

OPSET = 17
INPUT, MAP, SCORE, EMBEDDING = "image", "anomaly_map", "score", "embedding"
PARITY_TOLERANCE = 1e-3  # max |score_onnx - score_torch| / threshold: verdicts can differ only this close to 1.0
PARITY_FRAMES = 6
EMBED_TOLERANCE = 1e-3  # max |embedding_onnx - embedding_torch| per component (unit vectors)
CALIBRATION_KEYS = (
    "strategy",
    "target_fpr",
    "holdout_images",
    "left_out_images",
    "left_out_method",
    "expected_fpr",
    "fpr_interval_90",
    "meaning",
    "f1",
    "created",
)


def export_model(model_dir: Path, opset: int = OPSET) -> Path:
    """Export staging/ as the next version; the first version ever exported also becomes `current`."""
    model_dir = Path(model_dir)
    check_model_dir(model_dir)
    cal = read_json(staging(model_dir) / CALIBRATION_FILE, "run `inspector calibrate` first")
    threshold = check_threshold(cal.get("threshold"), f"threshold in {staging(model_dir) / CALIBRATION_FILE}")
    fit_info = read_json(staging(model_dir) / FIT_FILE, "refit the model")
    net, pre, _ = load_model(model_dir)
    tmp = registry.new_temp_dir(model_dir)
    try:
        to_onnx(net, tmp / MODEL_FILE, input_hw(pre), opset=opset, names=(MAP, SCORE, EMBEDDING))
        parity = check_parity(net, pre, tmp / MODEL_FILE, parity_frames(fit_info), threshold)
        shutil.copy2(staging(model_dir) / CALIBRATION_FILE, tmp / CALIBRATION_FILE)
        manifest = build_manifest(net, pre, tmp / MODEL_FILE, cal, fit_info, parity, opset)
        manifest["latent"] = fit_latent_space(net, pre, fit_info).to_dict()
        atomic_write_json(tmp / MANIFEST_FILE, manifest)
        load_verified(tmp)  # what the runtime will check, checked before anyone can see it
        final = registry.publish(tmp, model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if registry.current_version(model_dir) is None:
        registry.promote(model_dir, final.name, reason="first export")
        log.info("%s is the first exported version: `current` now points at it", final.name)
    return final


def input_hw(pre: Preprocess) -> tuple[int, int]:
    """The model's one network input size (per-position statistics hold only there)."""
    return pre.height, pre.width


def to_onnx(
    net: InspectorNet | torch.nn.Module,
    path: Path,
    hw: tuple[int, int],
    opset: int = OPSET,
    names: tuple[str, ...] = (MAP, SCORE),
) -> None:
    """Trace the network once at its input size, dynamic batch; unused backbone stages pruned.
    With EMBEDDING among `names`, the graph is `forward_embedded`'s (map, score, embedding)."""
    if EMBEDDING in names:
        net = EmbeddedNet(net)  # type: ignore[arg-type]
    net.eval()
    x = torch.zeros(2, 3, *hw)  # batch 2: nothing may be specialized to one frame
    axes = {INPUT: {0: "batch"}, **{n: {0: "batch"} for n in names}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
        torch.onnx.export(
            net,
            (x,),
            str(path),
            input_names=[INPUT],
            output_names=list(names),
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))


def parity_frames(fit_info: dict, n: int = PARITY_FRAMES) -> list[np.ndarray]:
    """Held-out good images (never fitted on) plus a wide and a tall crop (other aspect ratios, resized to
    the input size like any frame), several frames per batch. Seeded noise if the images are gone."""
    frames = []
    for item in fit_info.get("holdout", []):
        try:
            frames.append(load_image(item["path"]))
        except (ImageError, KeyError, TypeError):
            continue
        if len(frames) >= n - 2:
            break
    if not frames:
        log.warning("hold-out images of the fit are not readable: parity check on seeded noise frames")
        frames = [np.random.default_rng(i).integers(0, 256, (96, 96, 3), dtype=np.uint8) for i in range(n - 2)]
    base = frames[0]
    frames.append(np.ascontiguousarray(np.concatenate([base, base[:, : base.shape[1] // 2]], axis=1)))  # wide
    frames.append(np.ascontiguousarray(np.concatenate([base, base[: base.shape[0] // 2]], axis=0)))  # tall
    return frames


def check_parity(net: InspectorNet, pre: Preprocess, path: Path, frames: list[np.ndarray], threshold: float) -> dict:
    """Run the frames (tiled: their tiles) through torch and ORT CPU; raise unless every score agrees within
    tolerance. Tiles are compared one by one: a frame's score is their maximum, so it agrees as closely."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    groups: dict[tuple[int, ...], list[np.ndarray]] = {}
    for f in frames:
        for x in cut(prepare(f, pre), pre):  # a tiled model: each tile is one graph input
            groups.setdefault(x.shape, []).append(x)
    d_score = d_map = d_emb = 0.0
    with_embedding = EMBEDDING in {o.name for o in sess.get_outputs()}
    for xs in groups.values():
        batch = np.stack(xs)  # (B, 3, H, W)
        try:
            with torch.inference_mode():
                ref = net.forward_embedded(torch.from_numpy(batch)) if with_embedding else net(torch.from_numpy(batch))
        except RuntimeError as e:
            raise InspectorError(
                f"the model cannot score a {batch.shape[2]}x{batch.shape[3]} input ({str(e).splitlines()[0]})"
            ) from None
        outs = sess.run([MAP, SCORE, EMBEDDING] if with_embedding else [MAP, SCORE], {INPUT: batch})
        amap, score = outs[:2]
        d_score = max(d_score, float(np.abs(score - ref.score.numpy()).max()))
        d_map = max(d_map, float(np.abs(amap - ref.anomaly_map.numpy()).max()))
        if with_embedding:
            d_emb = max(d_emb, float(np.abs(outs[2] - ref.embedding.numpy()).max()))
    result = {
        "frames": len(frames),
        "input_sizes": [list(s[1:]) for s in groups],
        "max_abs_diff_score": d_score,
        "max_abs_diff_map": d_map,
        "max_diff_normalized": d_score / threshold,
        "tolerance_normalized": PARITY_TOLERANCE,
    }
    if d_score / threshold > PARITY_TOLERANCE:
        raise InspectorError(
            f"export parity check failed: ONNX Runtime and torch scores differ by {d_score / threshold:.2e} of the "
            f"threshold (tolerance {PARITY_TOLERANCE:.0e}); nothing was exported"
        )
    if with_embedding:
        result.update(max_abs_diff_embedding=d_emb, tolerance_embedding=EMBED_TOLERANCE)
        if d_emb > EMBED_TOLERANCE:
            raise InspectorError(
                f"export parity check failed: ONNX Runtime and torch embeddings differ by {d_emb:.2e} "
                f"(tolerance {EMBED_TOLERANCE:.0e}); nothing was exported"
            )
    return result


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in (
        "inspector",
        "torch",
        "timm",
        "onnx",
        "onnxruntime-gpu",
        "onnxruntime",
        "numpy",
        "opencv-python-headless",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    out.setdefault("onnxruntime", ort.__version__)
    return out


def _policy(pre: Preprocess) -> str:
    h, w = input_hw(pre)
    interp = "INTER_AREA when shrinking, else INTER_LINEAR"
    if not pre.keep_aspect:
        return f"every frame is squashed to {h}x{w} (H x W, aspect not kept); {interp}"
    if pre.tiled:
        ch, cw = pre.frame_size(h, w)
        return (
            f"every frame is resized to {ch}x{cw} (H x W) and cut into {pre.tiles[0]}x{pre.tiles[1]} tiles of {h}x{w} "
            f"overlapping {pre.tile_overlap:.0%} (see `tiling`); {interp}"
        )
    return (
        f"every frame is resized to {h}x{w} (H x W), the training images' median aspect with short side "
        f"{pre.short_side} px; {interp}"
    )


def build_manifest(
    net: InspectorNet, pre: Preprocess, onnx_path: Path, cal: dict, fit_info: dict, parity: dict, opset: int
) -> dict:
    cfg = net.cfg
    blob = onnx_path.read_bytes()
    return {
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {
            "file": MODEL_FILE,
            "sha256": hashlib.sha256(blob).hexdigest(),
            "size_bytes": len(blob),
            "opset": opset,
        },
        "input": {
            "name": INPUT,
            "layout": "NCHW",
            "dtype": "float32",
            "channels": "RGB",
            "dynamic_axes": ["batch"],
            "size": list(input_hw(pre)),
            "multiple_of": 32,
        },
        "outputs": {
            "anomaly_map": {"name": MAP, "shape": "(B, 1, H, W)", "units": "raw, at the input size"},
            "score": {"name": SCORE, "shape": "(B,)", "units": "raw; score / threshold >= 1.0 means anomaly"},
            "embedding": {
                "name": EMBEDDING,
                "shape": f"(B, {net.embedding_dim})",
                "units": "unit length; anomaly-weighted backbone patch features, then their mean, each projected",
            },
        },
        "preprocess": pre.to_dict(),
        "resize_policy": _policy(pre),
        "tiling": _tiling(pre, fit_info),
        "normalization": {
            "scale": 1 / 255,
            "mean": list(pre.mean),
            "std": list(pre.std),
            "order": "RGB",
            "from": "BGR uint8",
        },
        "backbone": {"name": cfg.backbone, "layers": list(cfg.layers), "feature_dim": net.feature_dim},
        "latent_size": cfg.latent,
        "reference": _reference(net),
        "network": cfg.model_dump(mode="json"),
        "grid": list(net.grid),
        "threshold": float(cal["threshold"]),
        "calibration": _calibration_summary(cal),
        "training": {
            k: fit_info.get(k)
            for k in ("fingerprint", "fit_images", "holdout_images", "image_sizes", "data", "created")
        },
        "parity": parity,
        "versions": _versions(),
    }


def _tiling(pre: Preprocess, fit_info: dict) -> dict:
    """How a frame becomes graph inputs and their outputs one result (the runtime reads `preprocess`; this says it
    in words). Untiled: one input per frame."""
    why = (fit_info.get("tiling") or {}).get("reason")
    if not pre.tiled:
        return {"tiles": [1, 1], "reason": why}
    return {
        "tiles": list(pre.tiles),
        "overlap": pre.tile_overlap,
        "tile_input": [pre.height, pre.width],
        "canvas": list(pre.frame_size(pre.height, pre.width)),
        "cut": "the frame resized to the canvas (exposure standardized over the whole frame), tiles row by row, "
        "each starting tile_input x (1 - overlap) after the previous one; the last ones end at the canvas edge",
        "score": "the highest tile score",
        "anomaly_map": "tile maps placed on the canvas, the highest value where tiles overlap",
        "embedding": "the embedding of the highest-scoring tile",
        "reason": why,
    }


def _reference(net: InspectorNet) -> dict:
    """The statistics of "good" baked into the graph as constants, and their size (the runtime sizes
    batches from the memory bank: its kNN distance matrix is the largest tensor of a run)."""
    buffers = {n: b for n, b in net.named_buffers() if not n.startswith("backbone.")}
    return {
        "bank_size": int(net.bank.shape[0]) if net.cfg.w_latent > 0 else 0,
        "dim": int(net.bank.shape[1]),
        "patch_stride": int(net.backbone.strides[0]),
        "buffers": {n: list(b.shape) for n, b in buffers.items()},
        "bytes": int(sum(b.numel() * b.element_size() for b in buffers.values())),
    }


def _calibration_summary(cal: dict) -> dict:
    out = {k: cal[k] for k in CALIBRATION_KEYS if k in cal}
    if isinstance(cal.get("labelled"), dict):  # precision/recall on labelled defects, without the curve
        out["labelled"] = {k: v for k, v in cal["labelled"].items() if k != "curve"}
    return out
