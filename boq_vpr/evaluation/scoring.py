"""Scoring a detector run against ground truth: retrieval and detection metrics, sweeps, latency."""
from __future__ import annotations

import dataclasses
import logging
import math
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from ..inputs import ground_truth as gtm
from . import metrics as mt
from ..errors import ConfigError
from ..inputs.ground_truth import Criterion
from ..detection import DetectorConfig
from ..values import latency_summary
from .frames import Frames
from .runs import Run

log = logging.getLogger(__name__)




@dataclass
class Scored:
    """A run scored against ground truth: metrics plus the per-query arrays the plots need."""

    metrics: dict
    by: str | None = None
    query_index: np.ndarray | None = None   # [Q'] queries with ground truth
    has_positive: np.ndarray | None = None
    best: np.ndarray | None = None
    best_correct: np.ndarray | None = None
    decision: np.ndarray | None = None
    accepted: np.ndarray | None = None
    accepted_correct: np.ndarray | None = None
    curve: mt.PRCurve | None = None


def eligible_mask(run: Run) -> np.ndarray:
    """``[Q, M]``: map frame m could be matched by query q (in the map, outside the window)."""
    in_map = run.map_ids >= 0
    if run.mode == 'slam':
        return in_map[None, :] & (run.map_ids[None, :] < run.cut[:, None])
    return np.broadcast_to(in_map[None, :], (len(run.query_index), len(run.map_ids)))


def score_run(run: Run, queries: Frames, map_frames: Frames, criterion: Criterion,
              ks: Sequence[int] = mt.DEFAULT_KS) -> Scored:
    """Score a run against ground truth.

    Metrics: counts always; recall@k, PR curve, AUC, recall at 100% precision, F1 and the operating
    point when ground truth exists (else skipped with a warning).
    """
    q_all = len(run.query_index)
    counts = {'frames': len(queries), 'map_frames': int((run.map_ids >= 0).sum()), 'queries': q_all,
              'not_keyframes': run.not_keyframes,
              'queries_with_match_outside_window': int((run.best >= 0).sum()),
              'accepted': int((run.accepted >= 0).sum())}
    metrics: dict[str, Any] = {'mode': run.mode, 'counts': counts}
    by = gtm.resolve_by(queries.gt, map_frames.gt, criterion)
    if by is None:
        log.warning('no ground truth for %s%s: recall@k, precision-recall, AUC and the operating point are skipped; '
                    'give --gt (and --map-gt) to compute them', queries.source,
                    '' if map_frames is queries else f' / {map_frames.source}')
        metrics['ground_truth'] = None
        metrics['skipped'] = ['recall_at_k', 'precision_recall', 'operating_point']
        return Scored(metrics)
    known = queries.gt.known(by)[run.query_index]
    qi = np.flatnonzero(known)
    positives = gtm.positive_matrix(queries.gt.subset(run.query_index[qi]), map_frames.gt, criterion, by)
    positives &= eligible_mask(run)[qi]
    has_pos = positives.any(axis=1)
    counts.update({'queries_with_ground_truth': int(qi.size), 'queries_without_ground_truth': int(q_all - qi.size),
                   'queries_with_true_match': int(has_pos.sum()),
                   'queries_without_true_match': int(qi.size - has_pos.sum())})
    metrics['ground_truth'] = {'by': by, 'criterion': criterion.describe(by), 'source': queries.gt.source,
                               'map_source': map_frames.gt.source}
    rows = np.arange(qi.size)
    best = run.best[qi]
    best_ok = (best >= 0) & positives[rows, np.maximum(best, 0)]
    acc = run.accepted[qi]
    acc_ok = (acc >= 0) & positives[rows, np.maximum(acc, 0)]
    decision = np.where(best >= 0, run.decision[qi], np.nan)
    if run.ranked is not None:
        hits = mt.retrieval_hits(run.ranked[qi], positives)
        metrics['recall_at_k'] = {str(k): v for k, v in mt.recall_at_k(hits, has_pos, ks).items()}
    curve = mt.precision_recall_curve(decision, best_ok, has_pos)
    metrics['precision_recall'] = mt.detection_metrics(decision, best_ok, has_pos)
    metrics['precision_recall']['score'] = (
        '-log10 false-alarm probability of the best match (calibrated decision_score)' if run.config.calibrated else
        'relative score (decision_score)' if run.config.relative_score > 0
        else 'cosine similarity of the best match (decision_score)')
    metrics['operating_point'] = mt.operating_point(acc >= 0, acc_ok, has_pos)
    if not has_pos.any():
        log.warning('no query has a true match %s: recall and AUC are undefined (NaN)', criterion.describe(by))
    return Scored(metrics, by, run.query_index[qi], has_pos, best, best_ok, decision, acc, acc_ok, curve)


# ------------------------------------------------------------------------------------------ sweep

# false-alarm rates a calibrated sweep tries (the decision scores are -log10 of the probability)
CALIBRATED_SWEEP = (0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 1e-6)

def sweep(run_fn, base: DetectorConfig, queries: Frames, map_frames: Frames, criterion: Criterion,
          target_precision: float = 0.95, thresholds: Sequence[float] | None = None,
          consistency: Sequence[int] = (1,), decisions: np.ndarray | None = None, n_thresholds: int = 15,
          progress: bool = True) -> dict:
    """Sweep thresholds and temporal consistency over saved descriptors; recommend a setting.

    It re-runs the detector (``run_fn(config) -> Run``, on saved descriptors) over a grid of score
    thresholds x temporal-consistency lengths; recommend the setting with the highest recall whose
    precision reaches ``target_precision``. The threshold is ``false_alarm_rate`` when the base
    configuration is calibrated, else ``relative_score`` when it uses relative scores, else
    ``min_score``.
    """
    param = ('false_alarm_rate' if base.calibrated else
             'relative_score' if base.relative_score > 0 else 'min_score')
    if thresholds is None and param == 'false_alarm_rate':
        thresholds = CALIBRATED_SWEEP
    if thresholds is None:
        d = np.asarray(decisions if decisions is not None else [], np.float64)
        d = d[np.isfinite(d)]
        if d.size == 0:
            raise ConfigError('threshold sweep: no decision scores to choose thresholds from')
        thresholds = np.unique(np.round(np.quantile(d, np.linspace(0.0, 1.0, n_thresholds)), 6))
    if param == 'min_score':
        thresholds = [float(min(max(t, -1.0), 1.0)) for t in thresholds]
    if param == 'false_alarm_rate' and not all(0 < t <= 0.5 for t in thresholds):
        raise ConfigError(f'false_alarm_rate sweep values must be in (0, 0.5], got {list(thresholds)}')
    strict = -1.0 if param == 'false_alarm_rate' else 1.0     # which direction of the threshold is stricter
    rows = []
    grid = [(float(t), int(c)) for c in consistency for t in thresholds]
    for t, c in tqdm(grid, desc='sweep', unit='run', file=sys.stderr, disable=None if progress else True):
        config = dataclasses.replace(base, **{param: t, 'temporal_consistency': c})
        config.validate()
        scored = score_run(run_fn(config), queries, map_frames, criterion, ks=(1,))
        op = scored.metrics.get('operating_point')
        if op is None:
            raise ConfigError('threshold sweep needs ground truth (give --gt)')
        rows.append({param: t, 'temporal_consistency': c, 'precision': op['precision'], 'recall': op['recall'],
                     'f1': op['f1'], 'tp': op['tp'], 'fp': op['fp'], 'fn': op['fn']})
    ok = [r for r in rows if r['tp'] > 0 and r['precision'] >= target_precision]
    result: dict[str, Any] = {'parameter': param, 'target_precision': target_precision, 'grid': rows}
    if ok:
        best = max(ok, key=lambda r: (r['recall'], -r['temporal_consistency'], strict * r[param]))
        result['recommended'] = {f'loop_closure.{param}': best[param],
                                 'loop_closure.temporal_consistency': best['temporal_consistency']}
        result['expected'] = {'precision': best['precision'], 'recall': best['recall'], 'f1': best['f1']}
    else:
        top = max(rows, key=lambda r: (r['precision'] if not math.isnan(r['precision']) else -1, r['recall']))
        result['recommended'] = None
        result['note'] = (f'no setting reaches precision {target_precision}; the best was {top["precision"]:.3f} '
                          f'at {param}={top[param]}, temporal_consistency={top["temporal_consistency"]}')
        log.warning('threshold sweep: %s', result['note'])
    return result


def latency(queries: Frames, run: Run, map_frames: Frames | None = None) -> dict:
    """Measure the time per stage in milliseconds.

    Stages: bag read + image decode (per frame), preprocessing and inference (per image, batched as
    ``encode_batch_size`` says), detector (search, filters and, in slam mode, adding the keyframe;
    per frame).
    """
    out = {'query': dict(queries.timings), 'detect_ms': latency_summary(run.detect_ms)}
    if map_frames is not None and map_frames is not queries and map_frames.timings:
        out['map'] = dict(map_frames.timings)
    return out


def as_jsonable(obj: Any) -> Any:
    """NaN -> None and numpy scalars -> Python, recursively (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): as_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return as_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# ------------------------------------------------------------------------------------------ live runs
