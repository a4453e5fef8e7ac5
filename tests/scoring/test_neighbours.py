"""The vector index: exact nearest neighbours, incremental appends searchable at once, the excluded id."""

from __future__ import annotations

import numpy as np

from inspector.scoring.neighbours import VectorIndex


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_is_the_exact_nearest_by_euclidean_distance():
    x = unit_rows(500, 16, 0)
    index = VectorIndex(16, capacity=8)  # grows several times
    index.add(np.arange(1000, 1500), x)
    for i in (0, 7, 499):
        ids, dist = index.search(x[i], 5)
        truth = np.argsort(np.linalg.norm(x - x[i], axis=1), kind="stable")[:5]
        assert ids.tolist() == (truth + 1000).tolist()
        assert np.allclose(dist, np.linalg.norm(x[truth] - x[i], axis=1), atol=1e-3)
        assert ids.dtype == np.int64 and dist.dtype == np.float32


def test_appended_items_are_searchable_at_once_and_earlier_results_stay_valid():
    x = unit_rows(300, 8, 1)
    index = VectorIndex(8, capacity=4)
    index.add(np.arange(100), x[:100])
    first, _ = index.search(x[250], 3)
    assert len(index) == 100 and 250 not in first
    for start in range(100, 300, 50):  # small batches, as the dashboard tops up from the store
        index.add(np.arange(start, start + 50), x[start : start + 50])
    ids, dist = index.search(x[250], 3)
    assert ids[0] == 250 and dist[0] < 1e-3 and len(index) == 300
    assert first.max() < 100  # a result is a copy: later appends (and growth) do not change it


def test_the_excluded_id_never_comes_back_and_k_larger_than_the_index():
    x = unit_rows(6, 4, 2)
    index = VectorIndex(4)
    index.add(np.arange(6), x)
    ids, dist = index.search(x[2], 10, exclude=2)
    assert sorted(ids.tolist()) == [0, 1, 3, 4, 5] and np.all(np.diff(dist) >= 0)
    ids, _ = index.search(x[2], 1, exclude=2)
    assert ids.tolist() != [2] and len(ids) == 1
    assert len(VectorIndex(4).search(x[0], 3)[0]) == 0


def test_float64_queries_and_rows_are_stored_and_searched_as_float32():
    x = unit_rows(50, 8, 3).astype(np.float64)
    index = VectorIndex(8)
    index.add(np.arange(50), x)
    ids, dist = index.search(x[10], 2)
    assert ids[0] == 10 and dist.dtype == np.float32
