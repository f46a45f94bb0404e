"""Retrieval metrics: top-k search and recall@k (pure functions, shapes asserted)."""
from __future__ import annotations

from typing import Sequence

import faiss
import numpy as np

DEFAULT_K = (1, 5, 10)


def retrieve(database: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Indices ``[Q, min(k, N)]`` of the nearest database descriptors by inner product
    (cosine similarity for L2-normalized descriptors), best first."""
    assert database.ndim == 2 and queries.ndim == 2, (database.shape, queries.shape)
    assert database.shape[1] == queries.shape[1], (database.shape, queries.shape)
    assert database.shape[0] > 0 and k >= 1, (database.shape, k)
    index = faiss.IndexFlatIP(database.shape[1])
    index.add(np.ascontiguousarray(database, dtype=np.float32))
    _, idx = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, database.shape[0]))
    return idx


def recall_at_k(predictions: np.ndarray, positives: Sequence[np.ndarray],
                k_values: Sequence[int] = DEFAULT_K) -> dict[int, float]:
    """Fraction of queries with at least one true positive among their first k predictions.

    ``predictions``: ``[Q, M]`` database indices, best first. ``positives``: per query, the
    database indices that count as correct (a query without positives counts as a miss).
    For k > M the first M predictions are used.
    """
    predictions = np.asarray(predictions)
    assert predictions.ndim == 2, predictions.shape
    assert len(positives) == predictions.shape[0], (len(positives), predictions.shape)
    assert len(k_values) > 0 and all(k >= 1 for k in k_values), k_values
    q = predictions.shape[0]
    if q == 0:
        return {int(k): 0.0 for k in k_values}
    # rank of the first correct prediction per query (a rank no k reaches when none)
    first = np.full(q, np.iinfo(np.int64).max, dtype=np.int64)
    for i, (pred, pos) in enumerate(zip(predictions, positives)):
        hit = np.flatnonzero(np.isin(pred, np.asarray(pos)))
        if hit.size:
            first[i] = hit[0]
    return {int(k): float(np.mean(first < k)) for k in k_values}
