"""Reference baselines: anomalib 2.7 PaDiM and PatchCore on one MVTec-style data set.

Why this exists: `benchmarks/quality.py` compares our inspector against the two methods people will
ask about. To make that comparison fair and reproducible on a CPU-only, offline machine we

- use the same local EfficientNet-Lite0 ImageNet weights as our own backbone (nothing downloaded),
- drive anomalib's torch models directly instead of Engine/Lightning (fewer moving parts, no
  logging/checkpoint side effects), but let anomalib's own code compute features, Gaussian /
  coreset statistics, anomaly maps and scores,
- compute every metric ourselves from the raw `pred_score` / `anomaly_map`, so that anomalib's
  post-processing (normalisation, its own thresholds) cannot leak into the numbers,
- choose the operating threshold on held-out *good training* images only, never on test data.

Pre-processing: anomalib's default (squash-resize to image_size x image_size with antialiasing,
ImageNet normalisation). Note anomalib's PatchCore module would by default also center-crop
(256 -> 224); we do not, so both methods see the whole part.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import timm
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.functional.classification import binary_auroc

from inspector.data.datasets import image_formats
from inspector.model.backbone import default_weights_path, load_weights
from inspector.pipeline.evaluate import fpr_by_name_order

BACKBONE = "efficientnet_lite0"
LAYERS = ["blocks.2", "blocks.4"]
PADIM_FEATURES = 100
# anomalib's default is 0.1, but k-center-greedy costs ~ (patches x coreset size): with 100 fit images
# (102,400 patches) 0.1 took ~17 min on this shared CPU; 0.02 keeps a PatchCore run near 5 min.
CORESET_RATIO = 0.02
NUM_NEIGHBORS = 9
METRIC_SIZE = 256  # pixel metrics are always computed at 256x256, whatever image_size is
FIT_BATCH = 8
# One intra-op thread while a baseline runs (restored afterwards): on this shared 2-core machine
# two OpenMP threads competing with other jobs made a batch-1 EfficientNet-Lite0 forward ~3 s
# instead of ~40 ms, which would make fit_s / ms_per_image meaningless.
TORCH_THREADS = 1
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


# ----------------------------------------------------------------------------------------- data


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder, sorted so runs are reproducible."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def list_test_set(root: Path) -> list[tuple[Path, int, Path | None]]:
    """(image, label, mask) of test/*: label 0 for test/good, 1 for test/<defect>; mask None where there is none.

    A set may come with image-level labels only: then `pixel_metrics_known` is False and the pixel metrics
    are not computed (reported as missing) rather than treating a missing mask as an empty one.
    """
    triples: list[tuple[Path, int, Path | None]] = [(p, 0, None) for p in list_images(root / "test" / "good")]
    for defect_dir in sorted(d for d in (root / "test").iterdir() if d.is_dir() and d.name != "good"):
        for img in list_images(defect_dir):
            mask = root / "ground_truth" / defect_dir.name / f"{img.stem}_mask.png"
            triples.append((img, 1, mask if mask.is_file() else None))
    return triples


def pixel_metrics_known(triples: list[tuple[Path, int, Path | None]]) -> bool:
    """Whether every defect image has a mask (else pixel metrics would count unmarked defects as good pixels)."""
    return any(label for _, label, _ in triples) and all(m is not None for _, label, m in triples if label)


def load_image(path: Path, size: int) -> torch.Tensor:
    """(3, size, size) ImageNet-normalised tensor, resized like anomalib's torchvision Resize.

    cv2.IMREAD_COLOR turns gray images (magnetic tile) into 3 identical channels. The resize is
    bilinear with antialiasing (what `torchvision.transforms.v2.Resize(antialias=True)` does on
    tensors); plain cv2 bilinear would alias when shrinking 1500 px ball-screw images to 256.
    """
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot read image {path}")
    rgb = torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).permute(2, 0, 1).float().div_(255.0)
    resized = F.interpolate(rgb[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return (resized.clamp_(0.0, 1.0) - IMAGENET_MEAN) / IMAGENET_STD


def load_mask(path: Path | None, size: int = METRIC_SIZE) -> torch.Tensor:
    """(size, size) long 0/1 mask, nearest resize so it stays binary; None means a good image."""
    if path is None:
        return torch.zeros(size, size, dtype=torch.long)
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise OSError(f"cannot read mask {path}")
    mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return torch.from_numpy((mask > 127).astype(np.int64))


def batches(paths: Sequence[Path], size: int, batch_size: int) -> Iterator[torch.Tensor]:
    """Stream images in batches so memory stays bounded by one batch, not the whole set."""
    for start in range(0, len(paths), batch_size):
        yield torch.stack([load_image(p, size) for p in paths[start : start + batch_size]])


# ---------------------------------------------------------------------------------------- model


def _load_imagenet_weights(extractor: nn.Module) -> None:
    """Put the local EfficientNet-Lite0 ImageNet weights into anomalib's timm feature extractor.

    anomalib builds it with `features_only=True`, whose keys are a subset of the full model's, so
    we load the weight file into a full timm model (by position, as inspector's backbone does) and
    copy the matching entries. Every extractor tensor must be covered: a silently random
    backbone would make the baseline look worse than it is.
    """
    full = timm.create_model(BACKBONE, pretrained=False)
    load_weights(full, default_weights_path())
    full_state = full.state_dict()
    target = extractor.state_dict()
    missing = [k for k in target if k not in full_state]
    if missing:
        raise ValueError(f"{len(missing)} feature-extractor tensors have no ImageNet weight, e.g. {missing[0]}")
    extractor.load_state_dict({k: full_state[k] for k in target})


def build_model(method: str) -> nn.Module:
    """anomalib torch model for `method`, with ImageNet weights, in eval mode.

    PaDiM draws its random feature subset (`idx`) at construction, so seed torch before calling.
    """
    if method == "padim":
        from anomalib.models.image.padim.torch_model import PadimModel

        model: nn.Module = PadimModel(
            backbone=BACKBONE, layers=list(LAYERS), pre_trained=False, n_features=PADIM_FEATURES
        )
    elif method == "patchcore":
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        model = PatchcoreModel(layers=list(LAYERS), backbone=BACKBONE, pre_trained=False, num_neighbors=NUM_NEIGHBORS)
    else:
        raise ValueError(f"unknown method {method!r}: use 'padim' or 'patchcore'")
    # TimmFeatureExtractor keeps the timm features_only model in `.feature_extractor`.
    _load_imagenet_weights(model.feature_extractor.feature_extractor)
    return model.eval()


@torch.no_grad()
def fit_model(model: nn.Module, method: str, paths: Sequence[Path], image_size: int, coreset_ratio: float) -> float:
    """Fit as anomalib's Lightning modules do; return seconds of model work (decode excluded).

    Training-mode forward makes both models store embeddings (BatchNorm stays frozen: the timm
    extractor is put in eval mode inside its forward). Then PaDiM fits its per-position Gaussian
    (`PadimModel.fit`) and PatchCore runs k-center-greedy coreset selection
    (`PatchcoreModel.subsample_embedding`), the same calls `Padim.fit` / `Patchcore.fit` make.
    """
    model.train()
    seconds = 0.0
    for batch in batches(paths, image_size, FIT_BATCH):
        start = time.perf_counter()
        model(batch)
        seconds += time.perf_counter() - start
    start = time.perf_counter()
    if method == "padim":
        model.fit()
    else:
        with warnings.catch_warnings():
            # anomalib 2.7's @deprecate warns about `embeddings` even when it is not passed.
            warnings.filterwarnings("ignore", message="Argument embeddings is deprecated")
            model.subsample_embedding(coreset_ratio)
    seconds += time.perf_counter() - start
    model.eval()
    return seconds


@torch.no_grad()
def score_images(
    model: nn.Module, paths: Sequence[Path], image_size: int, batch_size: int, keep_maps: bool
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Raw image scores, anomaly maps at METRIC_SIZE (if asked) and model ms per image.

    The timing covers only the model forward (features + distances + map), not JPEG decoding.
    """
    scores: list[torch.Tensor] = []
    maps: list[torch.Tensor] = []
    seconds = 0.0
    for batch in batches(paths, image_size, batch_size):
        start = time.perf_counter()
        out = model(batch)
        seconds += time.perf_counter() - start
        scores.append(out.pred_score.reshape(-1).float())
        if keep_maps:
            amap = out.anomaly_map.reshape(batch.shape[0], 1, image_size, image_size).float()
            if image_size != METRIC_SIZE:
                amap = F.interpolate(amap, size=(METRIC_SIZE, METRIC_SIZE), mode="bilinear", align_corners=False)
            maps.append(amap[:, 0])
    all_maps = torch.cat(maps) if keep_maps else None
    return torch.cat(scores), all_maps, 1000.0 * seconds / max(len(paths), 1)


# -------------------------------------------------------------------------------------- metrics


def holdout_threshold(holdout_scores: torch.Tensor, target_fpr: float) -> tuple[float, int]:
    """k-th largest held-out good score, k = floor(target_fpr * (n + 1)), at least 1.

    This is the conformal-style choice: with n exchangeable good scores, flagging >= the k-th
    largest gives an expected false-positive rate of about k / (n + 1) <= target_fpr.
    """
    n = holdout_scores.numel()
    if n == 0:
        raise ValueError("holdout is empty: cannot choose a threshold")
    k = min(max(1, math.floor(target_fpr * (n + 1))), n)
    return float(torch.sort(holdout_scores, descending=True).values[k - 1]), k


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact AUROC of raw scores (torchmetrics `binary_auroc`, no binning).

    torchmetrics treats preds outside [0, 1] as logits and applies a sigmoid, which saturates
    PaDiM/PatchCore distances (tens to hundreds) to 1.0 and makes every score tie (AUROC 0.5).
    A min-max rescale in float64 is monotone, so the AUROC is that of the raw scores.
    """
    flat = scores.reshape(-1).double()
    lo, hi = flat.min(), flat.max()
    unit = (flat - lo) / (hi - lo) if hi > lo else torch.zeros_like(flat)
    return float(binary_auroc(unit, labels.reshape(-1).long()))


def pixel_metrics(maps: torch.Tensor, masks: torch.Tensor) -> tuple[float, float]:
    """Pixel AUROC (exact) and AUPRO up to FPR 0.3 (anomalib's implementation, sorts raw maps)."""
    from anomalib.metrics.aupro import _AUPRO

    pixel_auroc = auroc(maps, masks)
    aupro = _AUPRO(fpr_limit=0.3)
    aupro.update(maps, masks)
    return pixel_auroc, float(aupro.compute())


# ------------------------------------------------------------------------------------------ API


def run_baseline(
    method: str,
    root: Path,
    holdout: list[Path],
    fit: list[Path],
    image_size: int = 256,
    target_fpr: float = 0.01,
    max_train: int | None = None,
    seed: int = 0,
) -> dict:
    """Fit `method` ("padim" | "patchcore") on `fit`, threshold on `holdout`, evaluate on root/test.

    Returns image_auroc, pixel_auroc (pixels at 256x256), aupro (FPR limit 0.3), fpr_at_threshold
    (fraction of test/good scoring >= the holdout threshold), fit_s (feature extraction + fitting,
    JPEG decoding excluded), ms_per_image (model forward at batch 1 on the test images, one torch
    thread: see TORCH_THREADS),
    train_images (number actually fitted on) and threshold_note.
    """
    previous_threads = torch.get_num_threads()
    numpy_state = np.random.get_state()
    torch.set_num_threads(TORCH_THREADS)
    try:
        with torch.random.fork_rng(devices=[]):
            return _run(
                method, Path(root), list(holdout), list(fit), image_size, target_fpr, max_train, seed, CORESET_RATIO
            )
    finally:
        torch.set_num_threads(previous_threads)
        np.random.set_state(numpy_state)


def _run(
    method: str,
    root: Path,
    holdout: list[Path],
    fit: list[Path],
    image_size: int,
    target_fpr: float,
    max_train: int | None,
    seed: int,
    coreset_ratio: float,
) -> dict:
    """Body of `run_baseline` (which only manages threads and restores the global RNG states)."""
    if max_train is not None and max_train < len(fit):
        rng = np.random.default_rng(seed)
        fit = [fit[i] for i in sorted(rng.choice(len(fit), size=max_train, replace=False))]
    if not fit:
        raise ValueError("no images to fit on")

    # Global RNGs: PaDiM's feature subset and PatchCore's coreset start use torch's; PatchCore's
    # sparse random projection draws column indices from numpy's (sklearn, random_state=None).
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = build_model(method)
    fit_s = fit_model(model, method, fit, image_size, coreset_ratio)

    holdout_scores, _, _ = score_images(model, holdout, image_size, FIT_BATCH, keep_maps=False)
    threshold, k = holdout_threshold(holdout_scores, target_fpr)

    triples = list_test_set(root)
    test_paths = [p for p, _, _ in triples]
    with_masks = pixel_metrics_known(triples)
    scores, maps, ms_per_image = score_images(model, test_paths, image_size, 1, keep_maps=with_masks)
    labels = torch.tensor([label for _, label, _ in triples])
    pixel_auroc = aupro = None
    if with_masks:
        assert maps is not None
        pixel_auroc, aupro = pixel_metrics(maps, torch.stack([load_mask(m) for _, _, m in triples]))
    good = labels == 0
    flagged = [bool(f) for f in (scores[good] >= threshold).tolist()]
    good_paths = [p for p, g in zip(test_paths, good.tolist()) if g]
    by_size = fpr_by_format(good_paths, flagged, fit)
    by_order = fpr_by_name_order(good_paths, (scores[good] / threshold).tolist())
    return {
        "image_auroc": auroc(scores, labels) if 0 < int(labels.sum()) < len(labels) else None,
        "pixel_auroc": pixel_auroc,
        "aupro": aupro,
        "fpr_at_threshold": float((scores[good] >= threshold).float().mean()),
        "fit_s": fit_s,
        "ms_per_image": ms_per_image,
        "train_images": len(fit),
        **({"fpr_by_image_size": by_size} if by_size else {}),
        **({"fpr_by_name_order": by_order} if by_order else {}),
        "threshold_note": (
            f"threshold {threshold:.6g} = rank-{k} largest of n={holdout_scores.numel()} held-out good train scores "
            f"(k = max(1, floor({target_fpr} * (n + 1)))); fpr_at_threshold = share of the {int(good.sum())} "
            f"test/good images scoring >= it" + _model_note(model, method, coreset_ratio)
        ),
    }


def file_size(path: Path) -> str:
    """ "WxH" of an image file (as inspector names camera formats), from its header."""
    from PIL import Image

    with Image.open(path) as im:
        return f"{im.width}x{im.height}"


def fpr_by_format(good: list[Path], flagged: list[bool], fit: list[Path]) -> dict[str, dict] | None:
    """False alarms per camera format of test/good, marking formats no fit image had (as `inspector evaluate`
    does); None when sizes vary per part, or all are of the one fitted format."""
    sizes = [file_size(p) for p in good]
    test_formats, fit_formats = image_formats(sizes), image_formats([file_size(p) for p in fit])
    if not test_formats or fit_formats is None:
        return None
    out = {
        k: {"images": n, "fpr": sum(f for s, f in zip(sizes, flagged) if s == k) / n, "fitted": k in fit_formats}
        for k, n in test_formats.items()
    }
    return out if len(out) > 1 or not all(g["fitted"] for g in out.values()) else None


def _model_note(model: nn.Module, method: str, coreset_ratio: float) -> str:
    """What was fitted, so a result file says which PatchCore memory bank produced it."""
    if method == "patchcore":
        return f"; PatchCore memory bank {model.memory_bank.shape[0]} patches (coreset ratio {coreset_ratio})"
    return f"; PaDiM {PADIM_FEATURES} random features of {model.n_features_original}"


def _split_train(root: Path, holdout_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Seeded random split of train/good into (fit, holdout), for command-line testing only."""
    images = list_images(root / "train" / "good")
    order = np.random.default_rng(seed).permutation(len(images))
    n_hold = max(1, round(holdout_fraction * len(images)))
    holdout = sorted(images[i] for i in order[:n_hold])
    fit = sorted(images[i] for i in order[n_hold:])
    return fit, holdout


def main() -> None:
    """Run one method on one data set and print the result dict as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=["padim", "patchcore"])
    parser.add_argument("root", type=Path, help="data set folder with train/, test/, ground_truth/")
    parser.add_argument("--holdout-fraction", type=float, default=0.3)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--target-fpr", type=float, default=0.01)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--coreset-ratio", type=float, default=CORESET_RATIO)
    args = parser.parse_args()
    fit, holdout = _split_train(args.root, args.holdout_fraction, args.seed)
    torch.set_num_threads(TORCH_THREADS)
    result = _run(
        args.method,
        args.root,
        holdout,
        fit,
        args.image_size,
        args.target_fpr,
        args.max_train,
        args.seed,
        args.coreset_ratio,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
