"""Validation retrieval: top-k search and recall@k.

Recall goes through the project's one recall function (``boq_vpr.evaluation.metrics.recall_at_k``:
queries without a true match are left out).
"""
from __future__ import annotations

from typing import Sequence

import faiss
import numpy as np

from boq_vpr.evaluation.metrics import recall_at_k

DEFAULT_K = (1, 5, 10)


def retrieve(database: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Return the indices ``[Q, min(k, N)]`` of the nearest database descriptors, best first.

    Nearest by inner product (cosine similarity for L2-normalized descriptors).
    """
    assert database.ndim == 2 and queries.ndim == 2, (database.shape, queries.shape)
    assert database.shape[1] == queries.shape[1], (database.shape, queries.shape)
    assert database.shape[0] > 0 and k >= 1, (database.shape, k)
    index = faiss.IndexFlatIP(database.shape[1])
    index.add(np.ascontiguousarray(database, dtype=np.float32))
    _, idx = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, database.shape[0]))
    return idx


def hits_from_positives(predictions: np.ndarray, positives: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Return ``hits [Q, M]`` and ``has_positive [Q]`` from per-query lists of positive indices.

    ``hits[q, j]``: prediction j of query q is one of its positives. The positives are lists of
    database indices (no dense ``[Q, N]`` matrix).
    """
    predictions = np.asarray(predictions)
    assert predictions.ndim == 2, predictions.shape
    assert len(positives) == predictions.shape[0], (len(positives), predictions.shape)
    hits = np.zeros(predictions.shape, bool)
    for i, pos in enumerate(positives):
        hits[i] = np.isin(predictions[i], np.asarray(pos, dtype=np.int64))
    has_positive = np.array([len(p) > 0 for p in positives], bool)
    return hits, has_positive


def recalls(predictions: np.ndarray, positives: Sequence[np.ndarray], k_values: Sequence[int] = DEFAULT_K
            ) -> dict[int, float]:
    """Recall@k of ranked database indices ``[Q, M]`` against per-query positive indices."""
    hits, has_positive = hits_from_positives(predictions, positives)
    return recall_at_k(hits, has_positive, tuple(k_values))
