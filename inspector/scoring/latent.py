"""Numpy side of the latent space: the 2-D projection, the good cloud's statistics, drift (no torch).

The projection is a PCA fitted at export on held-out good and labelled embeddings and stored in the
manifest (milliseconds per point, no start-up cost), so the watcher and the dashboard project with one
matmul. Drift is the distance of a day's mean good embedding from the reference cloud's mean, in units of
the cloud's spread (its RMS distance to its mean): 0 = no shift; a day of n frames drawn from the
reference itself gives about 1/sqrt(n).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_CLOUD_POINTS = 2000  # reference points kept in the manifest for the map


@dataclass(frozen=True)
class LatentSpace:
    """What the runtime needs of a version's latent space (from `manifest["latent"]`)."""

    dim: int
    mean: np.ndarray  # (D,) PCA centre
    components: np.ndarray  # (2, D)
    good_mean: np.ndarray  # (D,) mean of the held-out good embeddings
    good_spread: float  # RMS distance of the held-out good embeddings to their mean
    cloud: np.ndarray  # (N, 2) held-out good embeddings, projected

    def project(self, x: np.ndarray) -> np.ndarray:
        """(N, D) embeddings -> (N, 2) map coordinates."""
        return ((np.asarray(x, np.float32) - self.mean) @ self.components.T).astype(np.float32)

    def drift(self, x: np.ndarray) -> float:
        """Mean shift of embeddings (N, D) from the good cloud, in units of its spread."""
        return float(np.linalg.norm(np.asarray(x, np.float64).mean(0) - self.good_mean) / max(self.good_spread, 1e-12))

    def to_dict(self) -> dict:
        return {
            "dim": self.dim,
            "projection": "pca",
            "mean": self.mean.tolist(),
            "components": self.components.tolist(),
            "good_mean": self.good_mean.tolist(),
            "good_spread": self.good_spread,
            "cloud": np.round(self.cloud, 5).tolist(),
            "drift_statistic": "|mean - good_mean| / good_spread",
        }

    @classmethod
    def from_dict(cls, d: dict) -> LatentSpace:
        f = lambda k: np.asarray(d[k], np.float32)  # noqa: E731
        return cls(
            int(d["dim"]),
            f("mean"),
            f("components").reshape(2, -1),
            f("good_mean"),
            float(d["good_spread"]),
            f("cloud").reshape(-1, 2),
        )


def fit_space(good: np.ndarray, labelled: np.ndarray | None = None, seed: int = 0) -> LatentSpace:
    """PCA on good (N, D) plus labelled defect embeddings; the good cloud's mean and spread for drift.

    Defects take part in the fit so the map spreads them apart instead of only the good cloud's noise; they are
    weighted to at most as many rows as the good ones.
    """
    good = np.asarray(good, np.float64)
    rows = [good]
    if labelled is not None and len(labelled):
        rows.append(np.asarray(labelled, np.float64))
    x = np.concatenate(rows)
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[:2] if vt.shape[0] >= 2 else np.vstack([vt, np.zeros((2 - vt.shape[0], x.shape[1]))])
    comps = comps * np.sign(comps[:, :1] + 1e-12)  # a fixed sign: refits of the same data draw the same map
    g_mean = good.mean(0)
    spread = float(np.sqrt(((good - g_mean) ** 2).sum(1).mean())) if len(good) > 1 else 1.0
    keep = (
        good
        if len(good) <= MAX_CLOUD_POINTS
        else good[np.random.default_rng(seed).choice(len(good), MAX_CLOUD_POINTS, replace=False)]
    )
    space = LatentSpace(
        x.shape[1],
        mean.astype(np.float32),
        comps.astype(np.float32),
        g_mean.astype(np.float32),
        spread,
        np.zeros((0, 2), np.float32),
    )
    return LatentSpace(space.dim, space.mean, space.components, space.good_mean, spread, space.project(keep))


def as_vector(blob: bytes | None, dim: int | None = None) -> np.ndarray | None:
    """A stored embedding (float32 bytes) as a vector; None for none or a wrong length."""
    if blob is None:
        return None
    v = np.frombuffer(blob, np.float32)
    return v if dim is None or v.size == dim else None
