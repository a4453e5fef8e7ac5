"""Leave-one-out distances of the fit images under the feature Gaussian: more unseen-like good scores for free.

Why: the feature Gaussian (`gauss_source=features`, one covariance per position) fitted on n images of C = 152
standardized backbone features is near-singular when n < C. A fit image then lies inside the span it was fitted
on and scores about 25 times lower than any unseen image (docs/quality.md), so fit images tell nothing about
good scores, and a small product has only its few held-out images to judge candidates and to set the threshold
(7 held-out images promise at best 1/8 = 12.5%).

The backbone is frozen, so the features of an image do not depend on the fit: the Gaussian refitted without
image i gives image i exactly the score a model fitted on the other n - 1 images would give a new part. Sherman-
Morrison makes that cheap. With d = x_i - mean and S the scatter matrix at one position, removing image i gives
S' = S - n/(n-1) d d^T and x_i - mean' = n/(n-1) d, so with B = S/(n-2) + ridge I (the ridge of the full fit):

    distance'^2 = (n/(n-1))^2 q / (1 - a q),   q = d^T B^-1 d,   a = n / ((n-1)(n-2))

One extra inverse per position for all n images (the fit itself needs one). The ridge is the full fit's, not
recomputed without image i (it is 1% of the mean variance: a difference far below the score's noise).

Tiled models: the samples are tiles; each tile is left out on its own (the other tiles of its image stay, at other
positions of the part), so the tiles of one image are slightly optimistic; the image's score is its highest tile's.
"""

from __future__ import annotations

import numpy as np
import torch

CHUNK = 64  # positions per batched inverse (memory: CHUNK x C x C float64)


def left_out_distances(f: torch.Tensor, shrink: float = 0.01) -> torch.Tensor:
    """(N, C, h, w) standardized features -> (N, h, w): each sample's Mahalanobis distance to the per-position
    Gaussian fitted on the other N - 1 samples (the same ridge rule as `fit.fit_gaussian`, cell 1)."""
    n, c, h, w = f.shape
    if n < 3:
        raise ValueError(f"leave-one-out needs at least 3 samples, got {n}")
    x = f.detach().double().cpu().numpy().reshape(n, c, h * w).transpose(2, 0, 1)  # (P, N, C)
    out = np.empty((h * w, n))
    k, a = n / (n - 1), n / ((n - 1) * (n - 2))
    for p0 in range(0, h * w, CHUNK):
        d = x[p0 : p0 + CHUNK]
        d = d - d.mean(1, keepdims=True)  # (p, N, C)
        scatter = np.einsum("pnc,pnd->pcd", d, d)
        ridge = shrink * np.maximum(np.einsum("pcc->p", scatter) / ((n - 1) * c), 1e-6)  # as fit_gaussian's
        b = scatter / (n - 2) + ridge[:, None, None] * np.eye(c)
        q = np.einsum("pnc,pcd,pnd->pn", d, np.linalg.inv(b), d)
        out[p0 : p0 + CHUNK] = k * k * q / np.maximum(1.0 - a * q, 1e-12)
    return torch.from_numpy(np.sqrt(out).T.reshape(n, h, w)).float()


def alone_in_map(cfg) -> bool:
    """Whether a network's map is the feature Gaussian alone, one covariance per position: then a fit image's
    left-out distance is exactly its score under a model fitted without it (no latent term, trained on it too)."""
    return (
        cfg.gauss_source == "features"
        and cfg.w_gauss > 0
        and cfg.gauss_cell == 1
        and cfg.w_latent == 0
        and cfg.w_recon == 0
        and (cfg.w_global == 0 or cfg.global_bank == 0)
    )


def components(left_out: torch.Tensor) -> list[tuple]:
    """(N, T, h, w) left-out distances -> one score-component tuple per image, as `InspectorNet.components` gives
    them (lat, recon, gauss, glob; batched over tiles), with the terms this map does not use at zero."""
    out = []
    for g in left_out:
        z = torch.zeros_like(g)
        out.append((z, z, g, torch.zeros(g.shape[0])))
    return out
