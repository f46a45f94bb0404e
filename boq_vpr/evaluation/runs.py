"""Detector runs over saved descriptors, with the node's own detect step.

The detect step is ``FramePipeline.detect``. Modes: ``slam`` (one session, a new map) and
``localization`` (queries against a read-only map).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from ..errors import ConfigError
from ..inputs.ground_truth import GroundTruth
from ..detection import DetectorConfig, FrameResult, LoopClosureDetector
from ..map import Keyframe, MapDatabase
from ..pipeline import FramePipeline
from .frames import Frames, ground_truth_for



@dataclass
class Run:
    """Per-query results of one detector pass.

    Map frames are indexed ``0..M-1`` (``map_ids``: their keyframe ids, -1 when not in the map);
    query arrays have one row per queried frame.
    """

    mode: str
    config: DetectorConfig
    query_index: np.ndarray          # [Q] index into the query Frames
    cut: np.ndarray                  # [Q] matches must have keyframe id < cut (slam), -1 (localization)
    decision: np.ndarray             # [Q] decision score (NaN: no match outside the window)
    best: np.ndarray                 # [Q] map index of the best raw match (-1)
    best_score: np.ndarray
    accepted: np.ndarray             # [Q] map index of the first accepted candidate (-1)
    accepted_score: np.ndarray
    n_accepted: np.ndarray
    reasons: list[str]
    map_ids: np.ndarray              # [M]
    detect_ms: np.ndarray            # [N processed frames]
    not_keyframes: int = 0
    ranked: np.ndarray | None = None  # [Q, K] map indices for recall@k (-1 padded)
    ranked_scores: np.ndarray | None = None
    candidates: list[dict] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)      # [Q] a key of detection.OUTCOMES
    outcome_counts: dict[str, int] = field(default_factory=dict)   # every processed frame, not_keyframe included
    skipped: list[tuple[int, str]] = field(default_factory=list)   # (frame, reason) of frames not taken as keyframes


def _candidate_rows(result: FrameResult, frame: int, index_of: dict[int, int]) -> list[dict]:
    return [{'query_frame': frame, 'query_stamp_ns': c.query_stamp_ns, 'query_id': c.query_id,
             'match_id': c.match_id, 'match_frame': index_of.get(c.match_id, -1), 'match_stamp_ns': c.match_stamp_ns,
             'session': 'running' if c.same_session else 'earlier', 'kind': c.kind, 'score': c.score, 'rank': c.rank,
             'verified': c.verified, 'inliers': c.inliers}
            for c in result.candidates]


class _Collector:
    def __init__(self) -> None:
        self.rows: dict[str, list] = {k: [] for k in ('query_index', 'cut', 'decision', 'best', 'best_score',
                                                        'accepted', 'accepted_score', 'n_accepted', 'reasons',
                                                        'outcomes')}
        self.candidates: list[dict] = []

    def add(self, i: int, cut: int, r: FrameResult, index_of: dict[int, int]) -> None:
        best = index_of.get(r.best.match_id, -1) if r.best is not None else -1
        acc = index_of.get(r.candidates[0].match_id, -1) if r.candidates else -1
        row = self.rows
        row['query_index'].append(i)
        row['cut'].append(cut)
        row['decision'].append(r.decision_score if r.best is not None else math.nan)
        row['best'].append(best)
        row['best_score'].append(r.best.score if r.best is not None else math.nan)
        row['accepted'].append(acc)
        row['accepted_score'].append(r.candidates[0].score if r.candidates else math.nan)
        row['n_accepted'].append(len(r.candidates))
        row['reasons'].append(r.reason)
        row['outcomes'].append(r.outcome)
        self.candidates += _candidate_rows(r, i, index_of)

    def run(self, mode: str, config: DetectorConfig, map_ids: np.ndarray, detect_ms: list[float],
            not_keyframes: int, detector: LoopClosureDetector, skipped: list[tuple[int, str]] | None = None) -> Run:
        r = self.rows
        return Run(mode, config, np.array(r['query_index'], np.int64), np.array(r['cut'], np.int64),
                   np.array(r['decision'], np.float64), np.array(r['best'], np.int64),
                   np.array(r['best_score'], np.float64), np.array(r['accepted'], np.int64),
                   np.array(r['accepted_score'], np.float64), np.array(r['n_accepted'], np.int64),
                   list(r['reasons']), map_ids, np.array(detect_ms, np.float64), not_keyframes,
                   candidates=self.candidates, outcomes=list(r['outcomes']),
                   outcome_counts=dict(detector.outcome_counts), skipped=list(skipped or []))


def run_slam(frames: Frames, config: DetectorConfig, k: int = 20, retrieval: bool = True,
             index_type: str = 'flat', progress: bool = True, index_options: dict | None = None) -> Run:
    """One session in slam mode: every frame through ``detector.process`` in stamp order, a new in-memory map.

    ``k``: neighbours kept for recall@k (searched below the detector's window).
    """
    assert config.mode == 'slam'
    db = MapDatabase(frames.descriptors.shape[1], frames.fingerprint, index_type, **(index_options or {}))
    detector = LoopClosureDetector(db, config)
    pipeline = FramePipeline(None, detector)     # the node's detect step, on saved descriptors
    map_ids = np.full(len(frames), -1, np.int64)
    index_of: dict[int, int] = {}
    col = _Collector()
    detect_ms: list[float] = []
    ranked, ranked_scores = [], []
    not_kf = 0
    skipped: list[tuple[int, str]] = []
    for i in tqdm(range(len(frames)), desc='detect', unit='frame', file=sys.stderr,
                  disable=None if progress else True):
        stamp = int(frames.stamps_ns[i])
        cut = detector.search_limit(stamp)
        image = frames.images.get(i) if frames.images is not None else None
        t0 = time.perf_counter()
        result = pipeline.detect(frames.descriptors[i], stamp,
                                 position=frames.odom[i] if frames.odom is not None and
                                 np.isfinite(frames.odom[i]).all() else None,
                                 frame_id=frames.frame_ids[i], image=image,
                                 source=f'{frames.source}:{frames.topic}#{int(frames.indices[i])}').result
        detect_ms.append(1e3 * (time.perf_counter() - t0))
        if result.keyframe_id is None:
            not_kf += 1
            skipped.append((i, result.reason))
            continue
        map_ids[i] = result.keyframe_id
        index_of[result.keyframe_id] = i
        col.add(i, cut, result, index_of)
        if retrieval:
            s, ids = db.search(frames.descriptors[i:i + 1], k, id_below=cut)
            ranked.append([index_of.get(int(j), -1) for j in ids[0]])
            ranked_scores.append(s[0])
    run = col.run('slam', config, map_ids, detect_ms, not_kf, detector, skipped)
    if retrieval:
        run.ranked = np.array(ranked, np.int64).reshape(-1, k)
        run.ranked_scores = np.array(ranked_scores, np.float32).reshape(-1, k)
    return run


def build_map(frames: Frames, index_type: str = 'flat', session: str = 'map', thumbnails: bool = False,
              **index_options) -> MapDatabase:
    """Build a map with every frame of ``frames`` as a keyframe.

    Poses come from ground-truth positions or odometry when known).
    """
    db = MapDatabase(frames.descriptors.shape[1], frames.fingerprint, index_type, **index_options)
    kfs = []
    for i in range(len(frames)):
        pos = None
        for src in (frames.odom, frames.gt.positions):
            if src is not None and np.isfinite(src[i]).all():
                pos = tuple(float(v) for v in src[i])
                break
        kfs.append(Keyframe(-1, int(frames.stamps_ns[i]), pos, None, frames.frame_ids[i],
                            f'{frames.source}:{frames.topic}#{int(frames.indices[i])}', session))
    thumbs = [frames.images.get(i) for i in range(len(frames))] if thumbnails and frames.images is not None else None
    db.add(frames.descriptors, kfs, thumbnails=thumbs)
    return db


def map_frames_from_db(db: MapDatabase, gt_spec: str | None = None, max_dt_s: float = 0.5) -> Frames:
    """Return the keyframes of a saved map as ``Frames``.

    Descriptors come from the index, ground truth from the keyframe positions or from ``gt_spec``
    matched by keyframe stamp).
    """
    kfs = db.keyframes()
    ids = [kf.id for kf in kfs]
    desc = db.descriptors(ids) if ids else np.zeros((0, db.descriptor_dim), np.float32)
    stamps = np.array([kf.stamp_ns for kf in kfs], np.int64)
    pos = np.array([kf.position if kf.position is not None else (np.nan,) * 3 for kf in kfs], np.float64).reshape(-1, 3)
    if gt_spec == 'none':
        gt = GroundTruth.empty(len(kfs), 'none')
    elif gt_spec and gt_spec != 'auto':
        gt = ground_truth_for(None, stamps, gt_spec, max_dt_s)
    else:
        gt = GroundTruth(pos, None, 'map keyframe poses')
    frames = Frames(desc.astype(np.float32), stamps, np.array(ids, np.int64), [kf.frame_id for kf in kfs],
                    str(db.path or 'map'), 'keyframes', db.fingerprint, gt)
    return frames


def run_localization(queries: Frames, db: MapDatabase, config: DetectorConfig, map_ids: np.ndarray,
                     k: int = 20, retrieval: bool = True, progress: bool = True) -> Run:
    """Run every query frame through ``detector.process`` against the read-only map ``db``.

    ``map_ids[m]`` is the keyframe id of map frame ``m``.
    """
    assert config.mode == 'localization'
    if queries.fingerprint != db.fingerprint:
        raise ConfigError(f'queries were encoded with {queries.fingerprint}, the map with {db.fingerprint}; '
                          'use the same model and weights for both')
    detector = LoopClosureDetector(db, config)
    pipeline = FramePipeline(None, detector)     # the node's detect step, on saved descriptors
    index_of = {int(kid): m for m, kid in enumerate(map_ids)}
    col = _Collector()
    detect_ms: list[float] = []
    for i in tqdm(range(len(queries)), desc='detect', unit='frame', file=sys.stderr,
                  disable=None if progress else True):
        image = queries.images.get(i) if queries.images is not None else None
        t0 = time.perf_counter()
        result = pipeline.detect(queries.descriptors[i], int(queries.stamps_ns[i]),
                                 frame_id=queries.frame_ids[i], image=image,
                                 source=f'{queries.source}:{queries.topic}#{int(queries.indices[i])}').result
        detect_ms.append(1e3 * (time.perf_counter() - t0))
        col.add(i, -1, result, index_of)
    run = col.run('localization', config, np.asarray(map_ids, np.int64), detect_ms, 0, detector)
    if retrieval:
        s, ids = db.search(queries.descriptors, k)
        run.ranked = np.vectorize(lambda j: index_of.get(int(j), -1), otypes=[np.int64])(ids) if ids.size \
            else ids.astype(np.int64)
        run.ranked_scores = s
    return run


# ------------------------------------------------------------------------------------------ scoring
