"""Place-recognition and loop-closure metrics: pure functions on arrays, no I/O, no plotting.

Retrieval: recall@k over the queries that have at least one true match (``aligned_recalls``: of
two traversals aligned frame by frame).
Detection (one prediction per query with a confidence score): the precision-recall curve over
score thresholds (tied scores enter together), the area under it (average precision: step-wise,
without interpolation), the largest recall at 100% precision, the best F1, and the counts at an
operating point. A prediction on a query without any true match is a false positive; recall is
over the queries that have a true match.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_KS = (1, 5, 10, 20)


def retrieval_hits(ranked: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """``[Q, K]`` bool: the ``j``-th ranked reference of query ``q`` is a true match.

    ``ranked``: ``[Q, K]`` indices into the reference set (-1: no result); ``positives``:
    ``[Q, M]`` bool.
    """
    ranked = np.asarray(ranked)
    positives = np.asarray(positives, bool)
    assert ranked.ndim == 2 and positives.ndim == 2, 'ranked [Q, K] and positives [Q, M]'
    assert ranked.shape[0] == positives.shape[0], 'ranked and positives need the same number of queries'
    assert ranked.size == 0 or ranked.max() < positives.shape[1], 'ranked index beyond the reference set'
    valid = ranked >= 0
    rows = np.broadcast_to(np.arange(ranked.shape[0])[:, None], ranked.shape)
    hits = np.zeros(ranked.shape, bool)
    hits[valid] = positives[rows[valid], ranked[valid]]
    return hits


def recall_at_k(hits: np.ndarray, has_positive: np.ndarray, ks=DEFAULT_KS) -> dict[int, float]:
    """Fraction of queries with a true match that have one among their top ``k`` results.

    ``hits``: ``[Q, K]`` bool from ``retrieval_hits``; ``has_positive``: ``[Q]`` bool. Queries
    without a true match are left out. A ``k`` above ``K`` uses all ``K`` columns. NaN when no
    query has a true match.
    """
    hits = np.asarray(hits, bool)
    has_positive = np.asarray(has_positive, bool)
    assert hits.ndim == 2 and has_positive.shape == (hits.shape[0],), 'hits [Q, K] and has_positive [Q]'
    assert not (hits.any(axis=1) & ~has_positive).any(), 'a query without true matches has a hit'
    n = int(has_positive.sum())
    out = {}
    for k in ks:
        assert int(k) >= 1, 'k must be >= 1'
        if n == 0:
            out[int(k)] = math.nan
        else:
            out[int(k)] = float(hits[has_positive, :int(k)].any(axis=1).sum()) / n
    return out


def aligned_recalls(map_desc: np.ndarray, query_desc: np.ndarray, tolerance: int, ks=(1, 5, 10),
                    map_index: np.ndarray | None = None, query_index: np.ndarray | None = None) -> dict[int, float]:
    """Recall@k of frame-aligned traversals.

    Query ``i`` matches the map frames within ``tolerance`` frames of it (``*_index``: frame indices
    of the rows, default 0..N-1), ranked by cosine.
    """
    assert map_desc.ndim == 2 and query_desc.ndim == 2 and map_desc.shape[1] == query_desc.shape[1]
    mi = np.arange(len(map_desc)) if map_index is None else np.asarray(map_index)
    qi = np.arange(len(query_desc)) if query_index is None else np.asarray(query_index)
    sims = query_desc @ map_desc.T
    k = min(max(ks), len(map_desc))
    ranked = np.argsort(-sims, axis=1, kind='stable')[:, :k]
    positives = np.abs(qi[:, None] - mi[None, :]) <= tolerance
    return recall_at_k(retrieval_hits(ranked, positives), positives.any(axis=1), ks)


@dataclass
class PRCurve:
    """Points of a precision-recall curve, one per distinct score threshold, highest first.

    A query is predicted at threshold ``t`` when its score is ``>= t``. ``positives``: queries
    that have a true match (the recall denominator).
    """

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    positives: int

    def to_dict(self) -> dict:
        return {'thresholds': self.thresholds.tolist(), 'precision': self.precision.tolist(),
                'recall': self.recall.tolist(), 'tp': self.tp.tolist(), 'fp': self.fp.tolist(),
                'positives': self.positives}


def precision_recall_curve(scores: np.ndarray, correct: np.ndarray, has_positive: np.ndarray) -> PRCurve:
    """PR curve of per-query predictions.

    ``scores`` ``[Q]`` (NaN: no prediction), ``correct`` ``[Q]`` bool (the prediction is a true
    match; implies ``has_positive``), ``has_positive`` ``[Q]`` bool.
    """
    scores = np.asarray(scores, np.float64)
    correct = np.asarray(correct, bool)
    has_positive = np.asarray(has_positive, bool)
    assert scores.ndim == 1 and correct.shape == scores.shape and has_positive.shape == scores.shape, \
        'scores, correct and has_positive must be [Q]'
    predicted = ~np.isnan(scores)
    assert not (correct & ~predicted).any(), 'a query without prediction is marked correct'
    assert not (correct & ~has_positive).any(), 'a correct prediction on a query without true matches'
    s, c = scores[predicted], correct[predicted]
    order = np.argsort(-s, kind='stable')
    s, c = s[order], c[order]
    tp_cum = np.cumsum(c)
    fp_cum = np.cumsum(~c)
    # one point per distinct threshold: the last index of each run of equal scores
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1] if len(s) else np.zeros(0, np.int64)
    tp, fp = tp_cum[last].astype(np.int64), fp_cum[last].astype(np.int64)
    npos = int(has_positive.sum())
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / npos if npos else np.full(len(tp), np.nan)
    return PRCurve(s[last], precision.astype(np.float64), np.asarray(recall, np.float64), tp, fp, npos)


def average_precision(curve: PRCurve) -> float:
    """Area under the PR curve as average precision: sum of (R_i - R_{i-1}) * P_i, R_0 = 0 (no interpolation).

    NaN when no query has a true match.
    """
    if curve.positives == 0:
        return math.nan
    if len(curve.recall) == 0:
        return 0.0
    r = np.r_[0.0, curve.recall]
    return float(np.sum(np.diff(r) * curve.precision))


def max_recall_at_precision(curve: PRCurve, precision: float = 1.0) -> tuple[float, float | None]:
    """Return the largest recall among points with precision >= ``precision``, and its threshold.

    (0, None) when no point reaches it; recall NaN when no query has a true match.
    """
    if curve.positives == 0:
        return math.nan, None
    ok = curve.precision >= precision - 1e-12
    ok &= curve.tp > 0
    if not ok.any():
        return 0.0, None
    i = int(np.flatnonzero(ok)[np.argmax(curve.recall[ok])])
    return float(curve.recall[i]), float(curve.thresholds[i])


def f1_max(curve: PRCurve) -> dict:
    """Best F1 over the curve with its threshold, precision and recall (zeros when no true positive)."""
    if curve.positives == 0 or len(curve.tp) == 0 or curve.tp.max() == 0:
        return {'f1': 0.0 if curve.positives else math.nan, 'threshold': None, 'precision': 0.0, 'recall': 0.0}
    p, r = curve.precision, curve.recall
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
    i = int(np.argmax(f1))
    return {'f1': float(f1[i]), 'threshold': float(curve.thresholds[i]), 'precision': float(p[i]),
            'recall': float(r[i])}


def operating_point(predicted: np.ndarray, correct: np.ndarray, has_positive: np.ndarray) -> dict:
    """Count one set of decisions, with its rates (e.g. the detector's accepted loop closures).

    ``predicted`` ``[Q]`` bool, ``correct`` ``[Q]`` bool (implies predicted and has_positive),
    ``has_positive`` ``[Q]``. TP: correct prediction; FP: wrong prediction, or a prediction on a
    query without true match; FN: a query with a true match and no correct prediction; TN: no
    prediction and no true match.
    """
    predicted = np.asarray(predicted, bool)
    correct = np.asarray(correct, bool)
    has_positive = np.asarray(has_positive, bool)
    assert predicted.ndim == 1 and correct.shape == predicted.shape and has_positive.shape == predicted.shape, \
        'predicted, correct and has_positive must be [Q]'
    assert not (correct & ~predicted).any() and not (correct & ~has_positive).any(), \
        'correct implies predicted and has_positive'
    tp = int(correct.sum())
    fp = int((predicted & ~correct).sum())
    fn = int((has_positive & ~correct).sum())
    tn = int((~predicted & ~has_positive).sum())
    npos = int(has_positive.sum())
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / npos if npos else math.nan
    f1 = (2 * precision * recall / (precision + recall)
          if tp and not math.isnan(precision) and not math.isnan(recall) else 0.0)
    return {'tp': tp, 'fp': fp, 'fn': fn, 'tn': tn, 'predicted': int(predicted.sum()), 'positives': npos,
            'queries': int(predicted.size), 'precision': precision, 'recall': recall, 'f1': f1}


def detection_metrics(scores: np.ndarray, correct: np.ndarray, has_positive: np.ndarray) -> dict:
    """PR curve summary: AUC (average precision), max recall at 100% precision, F1 max."""
    curve = precision_recall_curve(scores, correct, has_positive)
    r100, t100 = max_recall_at_precision(curve, 1.0)
    return {'auc_pr': average_precision(curve), 'max_recall_at_100_precision': r100,
            'threshold_at_100_precision': t100, 'f1_max': f1_max(curve), 'points': int(len(curve.thresholds))}
