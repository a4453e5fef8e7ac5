"""Nearest-neighbour search over unit embeddings behind one small interface (numpy brute force).

Measured on this machine's 2 cores with 128-float vectors (benchmarks/latent.py): a float32 matmul against
the whole matrix answers in milliseconds at 100k and stays usable at 1M, with no build step, so a new item
is searchable as soon as it is appended. An approximate index (hnswlib, pgvector) would be faster at 1M
but needs a build and a dependency; `VectorIndex` is the one place to swap it in.
"""

from __future__ import annotations

import threading

import numpy as np


class VectorIndex:
    """Append-only set of (id, unit vector); `search` returns the k nearest by Euclidean distance."""

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self._ids = np.empty(capacity, np.int64)
        self._vecs = np.empty((capacity, dim), np.float32)
        self._n = 0
        self._lock = threading.Lock()  # appends (a refresh) and searches may come from different requests

    def __len__(self) -> int:
        return self._n

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Append rows; amortized O(1) (the arrays double when full)."""
        vectors = np.asarray(vectors, np.float32).reshape(-1, self.dim)
        ids = np.asarray(ids, np.int64).reshape(-1)
        with self._lock:
            need = self._n + len(ids)
            if need > len(self._ids):
                cap = max(need, 2 * len(self._ids))
                self._ids = np.concatenate([self._ids[: self._n], np.empty(cap - self._n, np.int64)])
                self._vecs = np.concatenate([self._vecs[: self._n], np.empty((cap - self._n, self.dim), np.float32)])
            self._ids[self._n : need] = ids
            self._vecs[self._n : need] = vectors
            self._n = need

    def search(self, query: np.ndarray, k: int, exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, distances) of the k nearest rows to one unit query, nearest first; `exclude`: an id to skip."""
        with self._lock:
            n, ids, vecs = self._n, self._ids, self._vecs
        if n == 0 or k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        sims = vecs[:n] @ np.asarray(query, np.float32).reshape(self.dim)  # (n,)
        if exclude is not None:
            sims[ids[:n] == exclude] = -np.inf
        k = min(k, n)
        top = np.argpartition(-sims, k - 1)[:k] if k < n else np.arange(n)
        top = top[np.argsort(-sims[top], kind="stable")]
        top = top[np.isfinite(sims[top])]
        dist = np.sqrt(np.clip(2.0 - 2.0 * sims[top], 0.0, None))  # unit vectors: |a - b|^2 = 2 - 2 a.b
        return ids[top].copy(), dist.astype(np.float32)


def suggest(statuses: list[str]) -> tuple[str | None, int, int]:
    """(verdict, votes for it, reviewed neighbours) from the review statuses of the nearest items, nearest first.

    Majority of the reviewed ones (confirmed or false_alarm); a tie goes to the nearest reviewed neighbour's.
    None when no neighbour is reviewed.
    """
    reviewed = [s for s in statuses if s in ("confirmed", "false_alarm")]
    if not reviewed:
        return None, 0, 0
    fa = reviewed.count("false_alarm")
    ok = len(reviewed) - fa
    verdict = "false_alarm" if fa > ok else "confirmed" if ok > fa else reviewed[0]
    return verdict, max(fa, ok), len(reviewed)
