"""Fit: learn what good looks like from defect-free images only.

1. split the good images into a fit set and a calibration hold-out (never used to fit);
2. extract frozen-CNN patch features of the fit set and standardize them per channel;
3. train the patch autoencoder on them;
4. fit a Gaussian of their latent vectors at every patch position (and, when the kNN term is on, keep a
   k-center coreset of them as a memory bank);
5. score the hold-out to learn the typical size of each score component;
6. (selection on) judge the candidates, and a variant whose Gaussian reads the standardized features, one per
   position (`select_features`); with `select_exposure` repeat 2-5 at the product's own exposure level; keep the
   best candidate (`inspector.pipeline.select`);
   where the images are large or long enough that `tiles=auto` would tile them (and `tiles` is not set by hand),
   repeat 2-5 once more on tiles with the better exposure, judged after the whole-image candidates.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from inspector.config.fit import CalibrateSettings, FitSettings
from inspector.data.datasets import LoadReport, discover, image_formats, iter_images, name_order
from inspector.data.images import image_size
from inspector.data.preprocess import Preprocess, prepare
from inspector.data.tiles import TilePlan, cut
from inspector.data.tiles import plan as plan_tiles
from inspector.errors import InspectorError
from inspector.files import atomic_write_json
from inspector.model.backbone import default_weights_path
from inspector.model.net import InspectorNet, to_cells
from inspector.pipeline import crossfit, select
from inspector.pipeline.checkpoint import FIT_FILE, MODEL_FILE, replace_dir, save_model, staging
from inspector.pipeline.infer import score_paths

log = logging.getLogger(__name__)
MIN_FIT_IMAGES = 5
IMAGES_PER_LATENT_DIM = 3
MIN_LATENT = 8
# Tiled, the fit gets its samples from tiles, so as many images as calibrate needs are held out (when at least
# MIN_FIT_IMAGES remain to fit): held-out images, not tiles, are what a threshold's promise counts.
TILED_MIN_HOLDOUT = CalibrateSettings.model_fields["min_holdout"].default


@dataclass
class FitResult:
    model_dir: Path
    n_fit: int
    n_holdout: int
    seconds: float
    skipped: int
    selection: dict | None = None  # what was tried and why (select.Selection.to_dict), None when nothing was searched
    tiling: dict | None = None  # whether the images were tiled and why (tiles.TilePlan.to_dict)
    n_left_out: int = 0  # fit images scored by refits that did not see them, calibrated on too (`crossfit`)


def split_holdout(
    paths: list[Path], fraction: float, seed: int, how: str = "last", at_least: int = 0
) -> tuple[list[Path], list[Path]]:
    """Deterministic split: (fit, holdout). `how` = "last": the last images in name order (numbers read as numbers),
    the newest where names carry a timestamp or counter; "random": seeded. `at_least` images are held out where
    MIN_FIT_IMAGES remain (tiled fits: TILED_MIN_HOLDOUT)."""
    n_hold = max(int(round(len(paths) * fraction)), min(at_least, len(paths) - MIN_FIT_IMAGES))
    if how == "last":
        order = sorted(paths, key=name_order)
        return order[: len(order) - n_hold], order[len(order) - n_hold :]
    order = sorted(paths)
    random.Random(seed).shuffle(order)
    return sorted(order[n_hold:]), sorted(order[:n_hold])


def fingerprint(paths: list[Path]) -> str:
    """sha256 over the names and bytes of the training images, to tell data sets apart later."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _bar(total: int, desc: str, show: bool):
    return tqdm(total=total, desc=desc, disable=not show, file=sys.stderr, unit="img", leave=False)


def extract_features(
    net: InspectorNet, pre: Preprocess, paths: list[Path], report: LoadReport, max_bad: float, show: bool
) -> tuple[torch.Tensor, dict[str, int] | None]:
    """Raw patch-feature maps of every readable image's tiles: (N*T, C, h, w) float16 (half the memory), and the
    image formats seen (`image_formats`)."""
    maps, sizes = [], []
    dev = net.feat_mean.device
    with torch.inference_mode(), _bar(len(paths), "features", show) as bar:
        for _, img in iter_images(paths, report, max_bad):
            tiles = cut(prepare(img, pre), pre)  # (T, 3, H, W): each tile a sample
            maps.append(net.features(torch.from_numpy(tiles).to(dev)).half())
            sizes.append(image_size(img))
            bar.update()
    if not maps:
        raise InspectorError("no readable images to fit on")
    return torch.cat(maps), image_formats(sizes)


def fit_device(device: str) -> torch.device:
    """The torch device of `FitSettings.device`; asking for cuda where torch sees no GPU is the user's to fix."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        build = "no GPU visible to torch" if torch.version.cuda else f"torch {torch.__version__} built without CUDA"
        raise InspectorError(f"--device cuda: {build}; use --device cpu (or auto)")
    if device == "cuda":
        log.info("fitting on cuda (%s)", torch.cuda.get_device_name(0))
    return torch.device(device)


def patch_positions(h: int, w: int) -> torch.Tensor:
    """(h*w, 2) centre of each patch as a fraction of the image (y, x), as `with_position` builds it."""
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    return torch.stack([ys.flatten(), xs.flatten()], 1)


def fit_gaussian(z: torch.Tensor, shrink: float = 0.01, cell: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position mean (1, L, h, w) and precision (cells, L, L) of latent maps z (N, L, h, w).

    With cell > 1 the positions of each cell x cell block pool their (own-mean-centred) samples into one
    covariance: cell^2 times the samples per estimate and cell^2 times less reference data per frame.

    A ridge of `shrink` x the mean variance keeps the inverse well conditioned (it beat Ledoit-Wolf
    shrinkage: docs/model.md); the latent is capped by the image count instead, see `latent_for`.
    """
    l = z.shape[1]
    mean, d, dof = _centred_cells(z, cell)
    cov = d.transpose(1, 2) @ d / dof[:, None, None]  # (cells, L, L)
    ridge = shrink * cov.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-6)  # scale-aware regularization
    cov = cov + ridge[:, None, None] * torch.eye(l, device=z.device)
    # numpy's LAPACK in float64, not torch's: torch's batched float32 inverse of many 152 x 152 matrices (the feature
    # Gaussian) intermittently failed in MKL ("Parameter 6 was incorrect on entry to SLASWP") and then never returned
    prec = np.linalg.inv(cov.double().cpu().numpy())
    return mean, torch.from_numpy(prec).to(dtype=cov.dtype, device=cov.device)


def _centred_cells(z: torch.Tensor, cell: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-position mean (1, D, h, w) of maps z (N, D, h, w), the centred samples cut into blocks (cells,
    N*cell*cell, D; padding adds zero rows) and each block's degrees of freedom (cells,): its real positions times
    N - 1, each position's own mean costing one sample."""
    n, _, h, w = z.shape
    mean = z.mean(0, keepdim=True)
    positions = to_cells(torch.ones(1, 1, h, w, device=z.device), cell).sum((1, 2))  # (cells,) real positions per cell
    return mean, to_cells(z - mean, cell), (positions * (n - 1)).clamp_min(1)


def fit_gaussian_low_rank(
    z: torch.Tensor, rank: int, shrink: float = 0.01, cell: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`fit_gaussian` where each block has fewer samples than dimensions (`gauss_rank_for`): the same covariance
    (sample covariance + `shrink` x its mean variance on the diagonal), kept as its rank-`rank` basis scaled for
    `InspectorNet.mahalanobis_low_rank`: mean (1, d, h, w), W (cells, d, rank), 1 / ridge (cells,). The sample
    covariance's rank is at most the samples' degrees of freedom; a block with fewer (unreadable images, a refit
    on fewer images) gets zero columns, which add nothing to the distance."""
    d = z.shape[1]
    mean, x, dof = _centred_cells(z, cell)
    dof = dof.double().cpu().numpy()
    # numpy's LAPACK in float64 (see fit_gaussian); the right singular vectors are the covariance's eigenvectors
    _, sv, vt = np.linalg.svd(x.double().cpu().numpy(), full_matrices=False)  # sv (cells, k), vt (cells, k, d)
    s = sv**2 / dof[:, None]  # eigenvalues of the sample covariance, descending
    ridge = shrink * np.maximum(s.sum(1) / d, 1e-6)  # shrink x the mean variance (its trace / d)
    k = min(rank, s.shape[1])
    scale = np.sqrt(s[:, :k] / (ridge[:, None] * (s[:, :k] + ridge[:, None])))
    basis = np.zeros((s.shape[0], d, rank))
    basis[:, :, :k] = vt[:, :k].transpose(0, 2, 1) * scale[:, None, :]
    as_t = lambda a: torch.from_numpy(a).to(dtype=z.dtype, device=z.device)  # noqa: E731
    return mean, as_t(basis), as_t(1.0 / ridge)


def gauss_rank_for(n_samples: int, dim: int, cell: int) -> int:
    """The rank a block's sample covariance can have (cell^2 positions, each centred on its own mean over
    `n_samples` images), or 0 where that is not below `dim`: then full precision matrices are kept."""
    dof = cell * cell * max(n_samples - 1, 1)
    return dof if dof < dim else 0


def latent_for(s: FitSettings, n_fit: int) -> int:
    """The latent size: as asked, but at most a third of the fit images when the per-position Gaussian is
    used: it estimates an L x L covariance per block of positions from one sample per image, and a nearly
    singular one ruins the score (docs/model.md)."""
    n = s.network
    if n.w_gauss <= 0 or n.gauss_source == "features":  # no Gaussian over the latent to estimate
        return n.latent
    return max(min(n.latent, n_fit // IMAGES_PER_LATENT_DIM), min(n.latent, MIN_LATENT))


def train_autoencoder(net: InspectorNet, x: torch.Tensor, s: FitSettings, gen: torch.Generator, show: bool) -> float:
    """Fit the autoencoder on standardized patch features x (N, C); returns the final loss."""
    ae = net.ae
    ae.train()
    opt = torch.optim.Adam(ae.parameters(), lr=s.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=s.steps, pct_start=0.1)
    loss_avg = float("nan")
    with tqdm(range(s.steps), desc="autoencoder", disable=not show, file=sys.stderr, leave=False) as bar:
        for step in bar:
            idx = torch.randint(0, x.shape[0], (min(s.batch_size, x.shape[0]),), generator=gen)
            xb = x[idx].float()  # (B, C)
            _, rec = ae.flat(xb)
            loss = (rec - xb).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_avg = loss.item() if step == 0 else 0.98 * loss_avg + 0.02 * loss.item()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss_avg:.4f}")
    ae.eval()
    return loss_avg


def encode(net: InspectorNet, x: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([net.ae.encode_rows(x[i : i + chunk].float()) for i in range(0, len(x), chunk)])


def greedy_coreset(z: torch.Tensor, k: int, gen: torch.Generator, max_candidates: int = 131072) -> torch.Tensor:
    """k-center greedy selection (as PatchCore): rows of z covering it with the smallest radius.

    Distances to each new centre come from one matrix-vector product (|z|^2 - 2 z.c + |c|^2) written into the
    running minimum in place: no (N, L) temporary per step, ~20x faster than differencing on 2 cores."""
    if z.shape[0] > max_candidates:
        z = z[torch.randperm(z.shape[0], generator=gen)[:max_candidates]]
    if z.shape[0] <= k:
        return z.clone()
    z = z.float().contiguous()
    sq = z.pow(2).sum(1)  # (N,)
    sel = [int(torch.randint(0, z.shape[0], (1,), generator=gen))]
    dist = sq - 2 * torch.mv(z, z[sel[0]]) + sq[sel[0]]
    step = torch.empty_like(dist)
    for _ in range(k - 1):
        j = int(dist.argmax())
        sel.append(j)
        torch.mv(z, z[j], out=step)
        torch.minimum(dist, step.mul_(-2).add_(sq).add_(sq[j]), out=dist)
    return z[sel].clone()


def _set_bank(net: InspectorNet, name: str, vectors: torch.Tensor) -> None:
    """Fill a fixed-size bank buffer; short banks repeat rows (distances are unchanged)."""
    buf = getattr(net, name)
    reps = math.ceil(buf.shape[0] / vectors.shape[0])
    filled = vectors.repeat(reps, 1)[: buf.shape[0]]
    buf.copy_(filled)
    getattr(net, f"{name}_sq" if name == "bank" else "global_sq").copy_(filled.pow(2).sum(1))


def preprocess_for(s: FitSettings, paths: list[Path]) -> tuple[TilePlan, TilePlan | None]:
    """(the preprocessing to fit, fixed to the training images' shape (`inspector.data.tiles.plan`), a tiled one
    to try beside it or None). Unless `tiles` is set by hand, selection tries tiles where the auto rule would tile:
    on the aligned parts measured whole images won, on long strips tiles keep a small flaw's pixels, so the
    product's own held-out images decide. Images the auto rule would not tile are fitted whole, as before."""
    sizes = [img.shape[:2] for _, img in iter_images(paths[:32], LoadReport(), 1.0)]
    size = (
        {"short_side": s.short_side} if s.short_side else {"max_pixels": s.max_pixels}
    )  # else Preprocess's default short side, capped
    base = Preprocess(
        max_long_side=s.max_long_side,
        keep_aspect=s.keep_aspect,
        exposure="none" if s.exposure == "none" else "standardize",
        **size,
    )
    asked = plan_tiles(sizes, base, s.tiles, s.tile_shrink, s.tile_overlap)
    if not s.select or "tiles" in s.model_fields_set:
        return asked, None
    auto = plan_tiles(sizes, base, "auto", s.tile_shrink, s.tile_overlap)
    return asked, auto if auto.pre.tiled else None


def build(s: FitSettings, pre: Preprocess, n_fit: int) -> InspectorNet:
    """The untrained network for the preprocessing's input size; `n_fit` fit images (each gives pre.n_tiles
    samples)."""
    n = s.network
    try:
        weights = s.weights if s.weights is not None else default_weights_path(n.backbone)
    except ImportError as e:
        raise InspectorError(f"{e} (or pass --weights)") from None
    if weights is None or not Path(weights).is_file():
        raise InspectorError(f"backbone weights file {weights} not found: pass --weights for backbone {n.backbone}")
    latent = latent_for(s, n_fit * pre.n_tiles)
    if latent < n.latent:
        tiles = f" ({pre.n_tiles} tiles each)" if pre.tiled else ""
        log.warning(
            "latent size %d instead of %d: %d fit images%s estimate a per-position Gaussian of at most %d "
            "dimensions (more good images allow more)",
            latent,
            n.latent,
            n_fit,
            tiles,
            latent,
        )
    grid = (pre.height // 8, pre.width // 8)
    try:
        net = InspectorNet(n.model_copy(update={"latent": latent, "gauss_rank": 0}), grid, Path(weights))
        if n.gauss_source == "features" and n.w_gauss > 0:  # few images: keep the covariance's rank-r basis
            rank = gauss_rank_for(n_fit * pre.n_tiles, net.feature_dim, n.gauss_cell)
            if rank:
                net = select.prune(net, net.cfg.model_copy(update={"gauss_rank": rank}))
    except (RuntimeError, ValueError) as e:
        raise InspectorError(f"cannot build backbone {n.backbone} from {weights}: {e}") from None
    if net.backbone.strides[0] != 8:
        raise InspectorError(
            f"layers {n.layers} of {n.backbone} start at stride {net.backbone.strides[0]}: the patch grid is the "
            "stride-8 map, so the first layer must be the stride-8 one (2 for EfficientNet)"
        )
    return net


def fit(
    data: Path,
    out: Path,
    s: FitSettings,
    show: bool = True,
    probe: Callable[[InspectorNet, Preprocess, list[select.Candidate]], None] | None = None,
) -> FitResult:
    """Fit a model on the good images of `data` into `out`. `probe` (benchmarks) sees the net with every
    candidate term before the selection prunes it, to score each candidate on its own labels."""
    t0 = time.time()
    ds = discover(data)
    whole, tiled = preprocess_for(s, ds.train)
    at_least = TILED_MIN_HOLDOUT if (tiled or whole).pre.tiled else 0  # one split for whole and tiled candidates
    fit_paths, holdout = split_holdout(ds.train, s.holdout_fraction, s.seed, s.holdout, at_least)
    if len(fit_paths) < MIN_FIT_IMAGES:
        raise InspectorError(
            f"{len(ds.train)} good images in {data}: need at least {MIN_FIT_IMAGES} to fit plus a hold-out"
        )
    labelled = [x.path for x in ds.test if x.label] if s.select_labelled else []
    job = _Job(s, fit_paths, holdout, labelled, show, probe)
    best, chosen, selection, info = _fit_and_choose(job, whole, tiled)
    loss, formats, report = best.extra
    left_out, how = [], None
    if crossfit.wanted(s.crossfit_folds, len(fit_paths), len(best.holdout_scores)):
        left_out, how = _cross_fit(chosen, best.pre, job), f"cross-fit, {s.crossfit_folds} folds"
    kept = (best.net, best.pre, chosen, data, fit_paths, holdout, best.holdout_scores, report, loss, t0, formats)
    result_dir = _write(out, *kept, selection, info, left_out, how)
    return FitResult(
        result_dir,
        len(fit_paths),
        len(best.holdout_scores),
        time.time() - t0,
        len(report.bad),
        selection,
        info,
        len(left_out),
    )


@dataclass
class _Job:
    """What every candidate fit of one `fit` call shares: the settings, the split, the judge's inputs."""

    s: FitSettings
    fit_paths: list[Path]
    holdout: list[Path]
    labelled: list[Path]
    show: bool
    probe: Callable[[InspectorNet, Preprocess, list[select.Candidate]], None] | None
    n_fits: int = 1  # fits judged in all (candidate names carry the exposure when more than one)

    def judged(self, f: select.Fitted, cands: list[select.Candidate]) -> list[dict]:
        """`select.judge`'s rows for one fit, after the benchmarks' probe has seen its candidates."""
        if self.probe is not None:
            named = [
                select.Candidate(select.label(c.name, f.settings.exposure, self.n_fits), c.overrides) for c in cands
            ]
            self.probe(f.net, f.pre, named)
        return select.judge(f, cands, self.holdout, self.labelled, self.s.seed)


def _fit_and_choose(
    job: _Job, whole: TilePlan, tiled: TilePlan | None
) -> tuple[select.Fitted, FitSettings, dict | None, dict]:
    """Fit whole images once per exposure policy and judge them, then (`select_features`) each fit's
    feature-Gaussian variant, after them in cost order; where tiles are a candidate, fit them too, with
    the better exposure only (bounded cost), judged on the same hold-out and synthetic defects and ordered last
    (tiles x the compute per frame: TIE keeps whole images unless tiles gain). Returns (the chosen fit, its
    settings, fit.json `selection`, `tiling`)."""
    s, n = job.s, len(job.fit_paths)
    search, cands = select.plan(s, n * whole.pre.n_tiles)
    exposures = select.exposures(s)
    job.n_fits = len(exposures) + (tiled is not None)
    fcands = select.feature_plan(s)
    job.n_fits += len(exposures) if fcands else 0
    fits = [_fit_one(search.model_copy(update={"exposure": e}), whole.pre, job, bool(fcands)) for e in exposures]
    if (job.n_fits == 1 and len(cands) == 1) or not fits[0].comps:
        return fits[0], fits[0].settings, None, whole.to_dict()
    lists, judged = [cands] * len(fits), [job.judged(f, cands) for f in fits]
    for f in list(fits) if fcands else []:  # after every latent candidate: costlier per frame, must gain more than TIE
        fits.append(_feature_variant(f, job))
        f.feature_gauss = None  # in the variant now: not kept twice (152^2 floats per position)
        lists, judged = [*lists, fcands], [*judged, job.judged(fits[-1], fcands)]
    sel = select.decide(fits, lists, judged)
    if tiled is not None:
        grid = "x".join(map(str, tiled.pre.tiles))
        tsearch, tcands = select.plan(s, n * tiled.pre.n_tiles)
        tcands = [select.Candidate(f"{c.name}, tiles {grid}", c.overrides) for c in tcands]
        tsearch = tsearch.model_copy(update={"exposure": fits[sel.fit].settings.exposure, "tiles": grid})
        fits.append(_fit_one(tsearch, tiled.pre, job))
        lists, judged = [*lists, tcands], [*judged, job.judged(fits[-1], tcands)]
        sel = select.decide(fits, lists, judged)
    best = fits[sel.fit]
    chosen = best.settings.model_copy(update={"network": best.settings.network.model_copy(update=sel.chosen.overrides)})
    best.net = select.prune(best.net, best.net.cfg.model_copy(update=sel.chosen.overrides))
    scorer = select.with_weights(best.net, {})
    best.holdout_scores = [(name, scorer(c)) for (name, _), c in zip(best.holdout_scores, best.comps)]
    return best, chosen, sel.to_dict(), tiling_info(whole, tiled, sel)


def tiling_info(whole: TilePlan, tiled: TilePlan | None, sel: select.Selection) -> dict:
    """fit.json `tiling`: the chosen input and, where tiles were a candidate, what was tried and why it won."""
    if tiled is None:
        return whole.to_dict()
    last = max(r["fit"] for r in sel.tried)
    w = max(r["criterion"] for r in sel.tried if r["fit"] < last)
    t = max(r["criterion"] for r in sel.tried if r["fit"] == last)
    chosen = tiled if sel.fit == last else whole
    exposure = next(r["exposure"] for r in sel.tried if r["fit"] == last)
    what = "tiles" if chosen is tiled else "whole images"
    why = (
        f"{what} chosen by the selection: best AUROC whole images {w:.3f}, tiled {t:.3f} (exposure {exposure}; "
        f"tiles must gain more than {select.TIE}); {chosen.reason.removeprefix('tiles=off: ')}"
    )
    tried = {"whole": whole.to_dict(), "tiled": tiled.to_dict(), "whole_auroc": w, "tiled_auroc": t}
    return chosen.to_dict() | {"reason": why, "tried": tried}


def _fit_one(
    s: FitSettings, pre: Preprocess, job: _Job, feature_gauss: bool = False, scoring_only: bool = False
) -> select.Fitted:
    """One fitted net, for the exposure policy of `s`, with its component scales set on the hold-out;
    `feature_gauss`: keep the standardized features' per-position Gaussian too (`_feature_variant`);
    `scoring_only`: a net that only scores (`_fit_net`)."""
    net, pre, loss, formats, report, fg = _fit_net(
        s, exposed(pre, s, job.fit_paths), job.fit_paths, job.show, feature_gauss, scoring_only
    )
    holdout_scores, comps = _calibrate_scales(net, pre, job.holdout, report, s, job.show)
    return select.Fitted(s, net, pre, holdout_scores, comps, (loss, formats, report), fg)


def _cross_fit(chosen: FitSettings, pre: Preprocess, job: _Job) -> list[tuple[str, float]]:
    """Every fit image's score from a refit of the chosen settings without its fold (`crossfit`)."""
    s = chosen.model_copy(update={"select": False})

    def refit(paths: list[Path]) -> select.Fitted:
        return _fit_one(s, pre, _Job(s, paths, job.holdout, [], False, None), scoring_only=True)

    def score(f: select.Fitted, paths: list[Path]) -> list[tuple[str, float]]:
        return [(str(r.path), r.score) for r in score_paths(f.net, f.pre, paths, LoadReport(), s.max_bad_fraction)]

    t0 = time.time()
    scores = crossfit.left_out_scores(job.fit_paths, s.crossfit_folds, refit, score, s.holdout == "last", s.seed)
    log.info("cross-fit: %d fit images scored by %d refits in %.0f s", len(scores), s.crossfit_folds, time.time() - t0)
    return scores


def _feature_variant(f: select.Fitted, job: _Job) -> select.Fitted:
    """Fit `f` with its Gaussian on the standardized features, one per position, alone in the map: the same backbone
    pass, feature statistics and autoencoder (kept in the model, unused by this map), scales set on the same
    hold-out."""
    rank = int(f.feature_gauss[1].shape[2]) if len(f.feature_gauss) == 3 else 0  # low-rank: few images
    cfg = f.net.cfg.model_copy(update=select.ON_FEATURES | {"gauss_rank": rank})
    net = select.prune(f.net, cfg)
    set_gaussian(net, f.feature_gauss)
    s = f.settings.model_copy(update={"network": f.settings.network.model_copy(update=select.ON_FEATURES)})
    holdout_scores, comps = _calibrate_scales(net, f.pre, job.holdout, LoadReport(), s, job.show)
    return select.Fitted(s, net, f.pre, holdout_scores, comps, f.extra)


def exposed(pre: Preprocess, s: FitSettings, fit_paths: list[Path]) -> Preprocess:
    """The preprocessing with the exposure policy of `s`; "product" standardizes to the product's own typical
    intensity, measured on images spread across the fit set."""
    pre = replace(pre, exposure="none" if s.exposure == "none" else "standardize")
    if s.exposure != "product":
        return pre
    spread = [fit_paths[i] for i in np.linspace(0, len(fit_paths) - 1, min(len(fit_paths), 32)).round().astype(int)]
    return pre.with_exposure_of(img for _, img in iter_images(spread, LoadReport(), 1.0))


def _fit_net(
    s: FitSettings,
    pre: Preprocess,
    fit_paths: list[Path],
    show: bool,
    feature_gauss: bool = False,
    scoring_only: bool = False,
):
    """Backbone features of the fit images -> standardization, autoencoder, Gaussian, banks: the fitted net, and
    (`feature_gauss`) the standardized features' Gaussian, one per position, for the selection's feature variant.
    `scoring_only` (the cross-fit's refits, which only score their left-out fold): where no score term reads the
    latent (the feature Gaussian alone), the autoencoder is not trained (~90% of such a refit); the saved model's
    always is."""
    torch.manual_seed(s.seed)
    gen = torch.Generator().manual_seed(s.seed)  # on the CPU on every device: the same sampling of patches
    dev = fit_device(s.device)
    net = build(s, pre, len(fit_paths))
    net.to(dev)
    report = LoadReport()

    maps, formats = extract_features(net, pre, fit_paths, report, s.max_bad_fraction, show)  # (N, C, h, w)
    n, c, h, w = maps.shape
    x = maps.permute(0, 2, 3, 1).reshape(-1, c)  # (N*h*w, C)
    mean, std = x.float().mean(0), x.float().std(0).clamp_min(1e-4)
    net.feat_mean.copy_(mean.view(1, -1, 1, 1))
    net.feat_std.copy_(std.view(1, -1, 1, 1))
    x = ((x.float() - mean) / std).half()
    feats = net.cfg.gauss_source == "features" and net.cfg.w_gauss > 0
    fg = None
    if feats or feature_gauss:  # (N, C, h, w) standardized; a near-singular covariance with few images is intended
        f = ((maps.float() - net.feat_mean) / net.feat_std).contiguous()
        cell = net.cfg.gauss_cell if feats else 1
        rank = net.cfg.gauss_rank if feats else gauss_rank_for(n, c, cell)
        fg = fit_gaussian_low_rank(f, rank, cell=cell) if rank else fit_gaussian(f, cell=cell)
        del f
    cfg = net.cfg
    if scoring_only and feats and not (cfg.w_latent > 0 or cfg.w_recon > 0 or cfg.global_bank > 0):
        set_gaussian(net, fg)
        net.to("cpu")
        return net, pre, float("nan"), formats, report, None
    loss = train_autoencoder(net, x, s, gen, show)

    z = encode(net, x)  # (N*h*w, L)
    del x, maps
    if net.cfg.w_latent > 0:  # the k-center coreset is the slowest step of a fit: only when the kNN term is used
        net.pos_scale.fill_(net.cfg.pos_weight * float(z.std(0).pow(2).sum().sqrt()))
        pos = patch_positions(h, w).repeat(n, 1).to(z.device)
        _set_bank(net, "bank", greedy_coreset(torch.cat([z, net.pos_scale * pos], 1), net.cfg.bank_size, gen))
    zmaps = z.reshape(n, h, w, -1).permute(0, 3, 1, 2)  # (N, L, h, w)
    if net.cfg.w_gauss > 0:
        set_gaussian(net, fg if feats else fit_gaussian(zmaps, cell=net.cfg.gauss_cell))
    if net.cfg.global_bank > 0:
        _set_bank(net, "global_bank", zmaps.mean((2, 3))[: net.cfg.global_bank])
    del z, zmaps
    net.to("cpu")  # the hold-out is scored and the model saved as the CPU and ONNX export will see it
    fg = tuple(t.cpu() for t in fg) if fg is not None and not feats else None
    return net, pre, loss, formats, report, fg


def set_gaussian(net: InspectorNet, g: tuple[torch.Tensor, ...]) -> None:
    """Copy a fitted Gaussian into the net: (mean, precision) from `fit_gaussian`, or (mean, basis, 1 / ridge)
    from `fit_gaussian_low_rank`."""
    net.gauss_mean.copy_(g[0])
    if len(g) == 3:
        net.gauss_basis.copy_(g[1])
        net.gauss_inv_ridge.copy_(g[2])
    else:
        net.gauss_prec.copy_(g[1])


def _calibrate_scales(net, pre, holdout, report, s, show) -> tuple[list[tuple[str, float]], list[tuple]]:
    """Set each component's scale to its median image-level value on the hold-out; return raw scores and the
    components they came from."""
    comps, names = [], []
    with _bar(len(holdout), "hold-out", show) as bar:
        for r in score_paths(net, pre, holdout, report, s.max_bad_fraction, keep_components=True):
            comps.append(r.components)
            names.append(str(r.path))
            bar.update()
    if comps:
        med = lambda vals: max(float(np.median(vals)), 1e-6)  # noqa: E731
        net.scales.copy_(
            torch.tensor(
                [
                    med([c[0].max().item() for c in comps]) if net.cfg.w_latent > 0 else 1.0,
                    med([c[1].max().item() for c in comps]) if net.cfg.w_recon > 0 else 1.0,
                    med([c[2].max().item() for c in comps]) if net.cfg.w_gauss > 0 else 1.0,
                    med([c[3].max().item() for c in comps]) if net.cfg.global_bank > 0 else 1.0,
                ]
            )
        )
    with torch.inference_mode():
        scores = [float(net.combine(*c, c[0].shape[-2:]).score.max()) for c in comps]  # the highest tile
    return list(zip(names, scores)), comps


def _write(
    out,
    net,
    pre,
    s,
    data,
    fit_paths,
    holdout,
    holdout_scores,
    report,
    loss,
    t0,
    formats,
    selection,
    tiling,
    left_out,
    how,
) -> Path:
    final = staging(out)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp"))
    tmp.chmod(0o755)  # mkdtemp makes it private; a watcher may run as another user
    save_model(tmp / MODEL_FILE, net, pre, {"settings": s.model_dump(mode="json")})
    atomic_write_json(
        tmp / FIT_FILE,
        {
            "data": str(Path(data).resolve()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "fit_images": len(fit_paths),
            "holdout_images": len(holdout_scores),
            "holdout_policy": s.holdout,
            "fingerprint": fingerprint(fit_paths),
            "image_sizes": formats,  # {"WxH": images} for a few camera formats; null when sizes vary per part
            "skipped": [{"path": str(p), "reason": r} for p, r in report.bad],
            "autoencoder_loss": loss,
            "fit_seconds": round(time.time() - t0, 2),
            "selection": selection,  # the candidates tried, their AUROC on synthetic (and labelled) defects, the choice
            "tiling": tiling,  # tiles per image (or whole images) and why
            "holdout": [{"path": p, "score": sc} for p, sc in holdout_scores],
            # fit images scored by refits of the chosen settings without their fold (`crossfit`): the calibration
            # counts them as good images never seen
            "left_out": [{"path": p, "score": sc} for p, sc in left_out],
            "left_out_method": how,
        },
    )
    replace_dir(tmp, final)
    return Path(out)
