"""Nearest-neighbour search over unit embeddings behind one small interface (numpy brute force).

Measured on this machine's 2 shared cores with 128-float vectors (benchmarks/latent.py, under load): one
float32 matrix-vector product over a contiguous, preallocated matrix plus `argpartition` answers in a few
milliseconds at 100k rows, with no build step, so a new item is searchable as soon as it is appended. The
product runs on one BLAS thread: it is memory-bound, and on a loaded machine a second thread mostly waits for
the first (100k x 128: p50 2.3 / p99 7 ms on one thread against 8 / 16 ms on two; at 1M two threads were
faster on a quiet machine, 23 against 33 ms p50, and up to ten times slower at p99 under load). An approximate
index (hnswlib, pgvector) would be faster at 1M but needs a build and a dependency; `VectorIndex` is the one
place to swap it in.
"""

from __future__ import annotations

import threading

import numpy as np
from threadpoolctl import ThreadpoolController

_BLAS = ThreadpoolController()  # found once: `limit` then costs ~20 us a query (a fresh lookup: ~250 us)


class VectorIndex:
    """Append-only set of (id, unit vector); `search` returns the k nearest by Euclidean distance."""

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self._ids = np.empty(capacity, np.int64)
        self._vecs = np.empty((capacity, dim), np.float32)  # C-contiguous: rows [0, n) are one matrix
        self._sims = np.empty(capacity, np.float32)  # the product's output, reused by every query
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
                self._grow(max(need, 2 * len(self._ids)))
            self._ids[self._n : need] = ids
            self._vecs[self._n : need] = vectors
            self._n = need

    def _grow(self, cap: int) -> None:
        ids, vecs = np.empty(cap, np.int64), np.empty((cap, self.dim), np.float32)
        ids[: self._n], vecs[: self._n] = self._ids[: self._n], self._vecs[: self._n]
        self._ids, self._vecs, self._sims = ids, vecs, np.empty(cap, np.float32)

    def search(self, query: np.ndarray, k: int, exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, distances) of the k nearest rows to one unit query, nearest first; `exclude`: an id to skip."""
        q = np.ascontiguousarray(query, np.float32).reshape(self.dim)  # no copy for a float32 vector
        with self._lock:  # one query at a time: the output buffer is shared (a query is milliseconds)
            n = self._n
            if n == 0 or k <= 0:
                return np.empty(0, np.int64), np.empty(0, np.float32)
            sims = self._sims[:n]
            with _BLAS.limit(limits=1, user_api="blas"):
                np.matmul(self._vecs[:n], q, out=sims)  # (n,) cosine similarities
            want = min(k + (exclude is not None), n)  # one spare for the excluded id: no O(n) mask
            top = np.argpartition(sims, n - want)[n - want :] if want < n else np.arange(n)
            top = top[np.argsort(-sims[top], kind="stable")]
            ids, best = self._ids[top], sims[top]
        keep = ids != exclude if exclude is not None else np.ones(len(ids), bool)
        ids, best = ids[keep][:k], best[keep][:k]
        dist = np.sqrt(np.clip(2.0 - 2.0 * best, 0.0, None))  # unit vectors: |a - b|^2 = 2 - 2 a.b
        return ids, dist.astype(np.float32)


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
