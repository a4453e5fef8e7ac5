"""Defect kinds: flagged items grouped by their embeddings (scikit-learn agglomerative clustering).

Average-linkage agglomerative clustering on cosine distance: deterministic (the same items give the same
groups, so a page refresh does not reshuffle them), no density parameter to tune, fine up to a few
thousand items per refresh (the dashboard clusters the most recent `MAX_CLUSTERED`). Either a fixed number of
groups (the benchmark, which knows the number of defect types) or a distance cut (the dashboard).
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import AgglomerativeClustering

DEFAULT_CUT = 0.35  # cosine distance between groups' average members above which they stay apart
MAX_CLUSTERED = 5000


def cluster(vectors: np.ndarray, n_groups: int | None = None, cut: float = DEFAULT_CUT) -> np.ndarray:
    """(N, D) unit vectors -> (N,) group labels 0..G-1, the largest group first."""
    x = np.asarray(vectors, np.float32)
    if len(x) < 2:
        return np.zeros(len(x), np.int64)
    model = AgglomerativeClustering(
        n_clusters=min(n_groups, len(x)) if n_groups else None,
        metric="cosine",
        linkage="average",
        distance_threshold=None if n_groups else cut,
    )
    labels = model.fit_predict(x)
    order = np.argsort(-np.bincount(labels), kind="stable")  # relabel by size
    return np.argsort(order)[labels]


def stable_ids(members: list[set[int]], previous: dict[int, set[int]], next_id: int) -> tuple[list[int], int]:
    """Group ids carried over from the last refresh: each new group takes the id of the old group it shares
    most items with (largest groups choose first, each old id once); the rest get fresh ids from `next_id`."""
    ids, taken = [], set()
    for m in members:
        best, overlap = None, 0
        for gid, old in previous.items():
            if gid not in taken and len(m & old) > overlap:
                best, overlap = gid, len(m & old)
        if best is None:
            best, next_id = next_id, next_id + 1
        taken.add(best)
        ids.append(best)
    return ids, next_id


def exemplars(vectors: np.ndarray, n: int = 4) -> np.ndarray:
    """Indices of the n members nearest the group's mean direction (its most typical items)."""
    x = np.asarray(vectors, np.float32)
    centre = x.mean(0)
    return np.argsort(-(x @ centre), kind="stable")[:n]
