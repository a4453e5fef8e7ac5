"""Torch side of the latent space: embeddings of image files and the export-time projection fit."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from inspector.data.datasets import LoadReport, discover, iter_images
from inspector.data.preprocess import Preprocess, prepare
from inspector.data.tiles import cut, reduce
from inspector.model.net import InspectorNet
from inspector.scoring.latent import LatentSpace, fit_space

log = logging.getLogger(__name__)
MAX_LABELLED = 500  # labelled test images embedded for the projection fit


def embed_frame(net: InspectorNet, pre: Preprocess, img: np.ndarray) -> tuple[float, np.ndarray]:
    """(raw score, embedding) of one frame, its tiles batched and reduced as the ONNX runtime does (`tiles.reduce`)."""
    with torch.inference_mode():
        out = net.forward_embedded(torch.from_numpy(cut(prepare(img, pre), pre)))  # (T, ...) over tiles
    score, _, emb = reduce(out.score.numpy(), out.anomaly_map[:, 0].numpy(), out.embedding.numpy(), pre)
    return score, emb


def embed_paths(
    net: InspectorNet, pre: Preprocess, paths: Sequence[Path], max_bad_fraction: float = 1.0
) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """(readable paths, raw scores (N,), embeddings (N, D)) of image files, one frame at a time."""
    net.eval()
    done, scores, embs = [], [], []
    for path, img in iter_images(list(paths), LoadReport(), max_bad_fraction):
        score, emb = embed_frame(net, pre, img)
        done.append(path)
        scores.append(score)
        embs.append(emb)
    dim = net.embedding_dim
    return done, np.asarray(scores, np.float32), np.asarray(embs, np.float32).reshape(-1, dim)


def fit_latent_space(net: InspectorNet, pre: Preprocess, fit_info: dict) -> LatentSpace:
    """The map's projection and the good cloud, from the fit's held-out good images and any labelled defects."""
    holdout = [Path(h["path"]) for h in fit_info.get("holdout", []) if isinstance(h, dict) and "path" in h]
    _, _, good = embed_paths(net, pre, [p for p in holdout if p.is_file()])
    labelled = None
    root = Path(str(fit_info.get("data", "")))
    if fit_info.get("data") and root.is_dir():
        try:
            ds = discover(root)
            defects = [s.path for s in ds.test if s.label == 1][:MAX_LABELLED]
            labelled = embed_paths(net, pre, defects)[2] if defects else None
        except Exception as e:  # noqa: BLE001 - the map is a convenience; the export must not fail over it
            log.warning("labelled images not used for the latent map (%s)", e)
    if len(good) == 0:
        log.warning("no hold-out good image readable: the latent map is fitted on seeded noise frames")
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(8)]
        good = np.stack([embed_frame(net, pre, f)[1] for f in frames])
    return fit_space(good, labelled)
