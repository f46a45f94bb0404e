"""Offline evaluation: bag images -> encoder -> map database -> loop-closure detector, frame by
frame, scored against ground truth.

The same library objects as the node: ``Encoder`` (descriptors), ``MapDatabase`` (FAISS) and
``LoopClosureDetector`` with a ``DetectorConfig`` read from the node's parameters file. Two modes:

- ``slam`` (one session): each frame goes through ``detector.process`` in stamp order and loops
  are found against the session's own past outside the exclusion window;
- ``localization`` (map vs queries): a map is built from one bag (every frame a keyframe) or
  loaded, and each frame of another bag queries it.

Retrieval metrics (recall@k) come from ``MapDatabase.search`` over the keyframes the detector
could match (in slam mode: below its exclusion window); detection metrics (precision-recall curve,
AUC, recall at 100% precision, F1) from ``FrameResult.decision_score`` and ``FrameResult.best``;
the operating point from the accepted ``FrameResult.candidates``. Descriptors can be saved and
reused (``Frames.save``/``Frames.load``) so that threshold sweeps do not re-encode.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from . import bags
from . import ground_truth as gtm
from . import metrics as mt
from .errors import BagError, ConfigError
from .ground_truth import Criterion, GroundTruth
from .images import decode_to_rgb8
from .loop_closure import CANDIDATE_COLUMNS, DetectorConfig, FrameResult, LoopClosureDetector
from .map_db import Keyframe, MapDatabase
from .values import NS_PER_S
from .ros.parameters import DETECTOR_PREFIX, detector_values

log = logging.getLogger(__name__)

FRAMES_FORMAT = 'boq_vpr-frames'
FRAMES_VERSION = 1


# ------------------------------------------------------------------------------------------ helpers

def latency_summary(ms: Sequence[float] | np.ndarray) -> dict:
    """Mean, median, 95th percentile and maximum of per-frame times in milliseconds."""
    a = np.asarray(ms, np.float64)
    if a.size == 0:
        return {'n': 0}
    return {'n': int(a.size), 'mean': float(a.mean()), 'p50': float(np.percentile(a, 50)),
            'p95': float(np.percentile(a, 95)), 'max': float(a.max())}


class ImageStore:
    """Images kept for geometric verification, losslessly PNG-compressed in memory."""

    def __init__(self) -> None:
        self._png: dict[int, bytes] = {}

    def put(self, index: int, rgb: np.ndarray) -> None:
        ok, buf = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:  # pragma: no cover - OpenCV fails only on invalid input
            raise BagError(f'image {index} cannot be stored')
        self._png[int(index)] = buf.tobytes()

    def get(self, index: int) -> np.ndarray | None:
        data = self._png.get(int(index))
        return None if data is None else decode_to_rgb8(data)

    def __len__(self) -> int:
        return len(self._png)


@dataclass
class Frames:
    """One image topic of one bag, in stamp order: descriptors ``[N, D]``, stamps, message index
    on the topic, camera frame ids, ground truth, optional odometry positions ``[N, 3]``, what
    reading met (``report``) and the time per stage (``timings``, milliseconds)."""

    descriptors: np.ndarray
    stamps_ns: np.ndarray
    indices: np.ndarray
    frame_ids: list[str]
    source: str
    topic: str
    fingerprint: str
    gt: GroundTruth = field(default_factory=GroundTruth)
    odom: np.ndarray | None = None
    report: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    encoder: dict = field(default_factory=dict)
    images: ImageStore | None = None

    def __len__(self) -> int:
        return int(self.descriptors.shape[0])

    def save(self, path: str | Path) -> Path:
        """Write descriptors, stamps, ground truth and metadata to ``path`` (``.npz``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {'format': FRAMES_FORMAT, 'version': FRAMES_VERSION, 'source': self.source, 'topic': self.topic,
                'fingerprint': self.fingerprint, 'frame_ids': self.frame_ids, 'report': self.report,
                'timings': self.timings, 'encoder': self.encoder, 'gt_source': self.gt.source}
        arrays = {'descriptors': self.descriptors, 'stamps_ns': self.stamps_ns, 'indices': self.indices,
                  'meta': np.array(json.dumps(meta))}
        if self.gt.positions is not None:
            arrays['gt_positions'] = self.gt.positions
        if self.gt.frames is not None:
            arrays['gt_frames'] = self.gt.frames
        if self.odom is not None:
            arrays['odom'] = self.odom
        tmp = path.with_name(path.name + '.tmp.npz')
        np.savez(tmp, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> 'Frames':
        """Read a file written by ``save``; ``BagError`` naming it when it is not one."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z['meta']))
                if meta.get('format') != FRAMES_FORMAT:
                    raise BagError(f'{path}: not a descriptor file of boq-vpr evaluate (--save-descriptors)')
                gt = GroundTruth(z['gt_positions'] if 'gt_positions' in z else None,
                                 z['gt_frames'] if 'gt_frames' in z else None, meta.get('gt_source', ''))
                return cls(z['descriptors'].astype(np.float32), z['stamps_ns'].astype(np.int64),
                           z['indices'].astype(np.int64), list(meta['frame_ids']), meta['source'], meta['topic'],
                           meta['fingerprint'], gt, z['odom'] if 'odom' in z else None, meta.get('report', {}),
                           meta.get('timings', {}), meta.get('encoder', {}))
        except (OSError, ValueError, KeyError) as err:
            raise BagError(f'{path}: cannot read descriptors ({err}); write them with --save-descriptors') from err


def read_frames(bag: str | Path, encoder: Any, topic: str | None = None, *, stamp: str = 'header',
                every: int = 1, max_frames: int | None = None, keep_images: bool = False,
                progress: bool = True) -> Frames:
    """Read and encode the images of one topic; frames come back sorted by stamp (stamps that go
    backwards in the bag are counted in ``report['out_of_order_stamps']`` and reordered)."""
    bag = Path(bag)
    report = bags.ReadReport()
    stamps, indices, frame_ids, blocks = [], [], [], []
    read_ms: list[float] = []
    store = ImageStore() if keep_images else None
    t_pre0, t_inf0, n0 = encoder.times.preprocess, encoder.times.infer, encoder.times.images
    topics = bags.list_topics(bag)
    chosen = bags.select_topic(bag, topics, topic, bags.IMAGE_TYPES, 'image')
    total = -(-chosen.count // every)
    if max_frames is not None:
        total = min(total, max_frames)
    it = bags.iter_images(bag, chosen.name, stamp=stamp, report=report, max_frames=max_frames, every=every)

    def images():
        while True:
            t0 = time.perf_counter()
            try:
                image = next(it)
            except StopIteration:
                return
            read_ms.append(1e3 * (time.perf_counter() - t0))
            stamps.append(image.stamp_ns)
            indices.append(image.index)
            frame_ids.append(image.frame_id)
            if store is not None:
                store.put(len(stamps) - 1, image.rgb)
            yield image.rgb

    with tqdm(total=total, unit='img', desc=f'encode {bag.name}', file=sys.stderr,
              disable=None if progress else True) as bar:
        for block in encoder.encode_iter(images()):
            blocks.append(block)
            bar.update(len(block))
    if not stamps:
        raise BagError(f'{bag}:{chosen.name}: no usable image ({report.messages} messages, '
                       f'{len(report.skipped)} skipped)')
    n = encoder.times.images - n0
    timings = {'read_decode_ms': latency_summary(read_ms),
               'preprocess_ms_per_image': 1e3 * (encoder.times.preprocess - t_pre0) / max(n, 1),
               'infer_ms_per_image': 1e3 * (encoder.times.infer - t_inf0) / max(n, 1),
               'encode_batch_size': int(encoder.batch_size)}
    desc = np.concatenate(blocks)
    frames = Frames(desc, np.array(stamps, np.int64), np.array(indices, np.int64), frame_ids, str(bag),
                    chosen.name, encoder.fingerprint, report=report.to_dict(), timings=timings,
                    encoder=encoder.describe(), images=store)
    return sort_by_stamp(frames)


def sort_by_stamp(frames: Frames) -> Frames:
    """Frames in stamp order (stable); reports how many were out of order."""
    order = np.argsort(frames.stamps_ns, kind='stable')
    reordered = not np.array_equal(order, np.arange(len(order)))
    frames.report['reordered_to_stamp_order'] = bool(reordered)
    if not reordered:
        return frames
    log.warning('%s:%s: %d frames have stamps that go backwards in the bag; evaluating in stamp order',
                frames.source, frames.topic, frames.report.get('out_of_order_stamps', 0))
    store = frames.images
    if store is not None:
        new = ImageStore()
        for new_i, old_i in enumerate(order):
            new._png[new_i] = store._png[int(old_i)]
        store = new
    return dataclasses.replace(
        frames, descriptors=frames.descriptors[order], stamps_ns=frames.stamps_ns[order],
        indices=frames.indices[order], frame_ids=[frames.frame_ids[i] for i in order],
        gt=frames.gt.subset(order) if len(frames.gt) == len(order) else frames.gt,
        odom=frames.odom[order] if frames.odom is not None else None, images=store)


def load_images(frames: Frames, bag: str | Path, stamp: str = 'header') -> None:
    """Fill ``frames.images`` from the bag (for geometric verification with saved descriptors)."""
    by_index = {int(i): k for k, i in enumerate(frames.indices)}
    store = ImageStore()
    for image in bags.iter_images(bag, frames.topic, stamp=stamp):
        k = by_index.get(image.index)
        if k is not None:
            store.put(k, image.rgb)
    missing = len(frames) - len(store)
    if missing:
        raise BagError(f'{bag}: {missing} frames of the saved descriptors are not in the bag; '
                       'are they from another bag?')
    frames.images = store


GT_FORMS = "auto, none, frames, csv:PATH, topic:/pose_topic, or a CSV path"


def ground_truth_for(bag: str | Path | None, stamps_ns: np.ndarray, spec: str | None = 'auto',
                     max_dt_s: float = 0.5) -> GroundTruth:
    """Ground truth at ``stamps_ns``. ``spec``: 'auto' (the bag's ``make-bag`` CSV when present),
    'none', 'frames' (frame order), 'csv:PATH' or a CSV path, 'topic:/name' (a pose topic of the
    bag: Odometry, PoseStamped or PoseWithCovarianceStamped)."""
    spec = spec or 'auto'
    n = len(stamps_ns)
    if spec == 'none':
        return GroundTruth.empty(n, 'none')
    if spec == 'frames':
        return gtm.from_frame_order(n)
    if spec == 'auto':
        if bag is not None and bags.ground_truth_sidecar(bag).is_file():
            sidecar = bags.ground_truth_sidecar(bag)
            log.info('ground truth of %s: %s', bag, sidecar)
            return gtm.from_csv(sidecar, stamps_ns, max_dt_s)
        return GroundTruth.empty(n, 'none')
    if spec.startswith('topic:'):
        if bag is None:
            raise ConfigError(f'--gt {spec}: a pose topic needs the bag')
        return gtm.from_poses(bags.read_poses(bag, spec[len('topic:'):]), stamps_ns, max_dt_s,
                              source=f'{bag}:{spec[len("topic:"):]}')
    path = Path(spec[len('csv:'):] if spec.startswith('csv:') else spec)
    if not path.is_file():
        raise ConfigError(f'ground truth {spec!r}: no such file; give one of {GT_FORMS}')
    return gtm.from_csv(path, stamps_ns, max_dt_s)


# ------------------------------------------------------------------------------------------ parameters

def _flatten(d: dict, prefix: str = '') -> dict:
    out = {}
    for k, v in d.items():
        key = f'{prefix}{k}'
        if isinstance(v, dict):
            out.update(_flatten(v, key + '.'))
        else:
            out[key] = v
    return out


def load_params(path: str | Path, node: str | None = None) -> dict:
    """The flat ``name -> value`` parameters of a ROS 2 parameters file (``/**:`` or a node name,
    then ``ros__parameters``; nested keys joined with dots)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f'{path}: cannot read the parameters file: {err}') from err
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: not a ROS 2 parameters file (expected "/**: ros__parameters: ...")')
    sections = {k: v.get('ros__parameters') for k, v in data.items()
                if isinstance(v, dict) and isinstance(v.get('ros__parameters'), dict)}
    if not sections:
        raise ConfigError(f'{path}: no "ros__parameters" section (expected "/**: ros__parameters: ...")')
    params: dict = {}
    for name in sorted(sections, key=lambda k: (k != '/**', k)):   # wildcard first, node names override
        if node is None or name in ('/**', node, '/' + node.lstrip('/')):
            params.update(_flatten(sections[name]))
    return params


def parse_overrides(items: Sequence[str]) -> dict:
    """['min_score=0.5', 'temporal_consistency=3'] -> dict, values parsed as YAML scalars."""
    out = {}
    for item in items:
        key, sep, value = item.partition('=')
        if not sep or not key.strip():
            raise ConfigError(f'--set expects KEY=VALUE (a DetectorConfig field), got {item!r}')
        key = key.strip()
        if key.startswith(DETECTOR_PREFIX):
            key = key[len(DETECTOR_PREFIX):]
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f'--set {item!r}: the value is not a YAML scalar ({err})') from None
    return out


def detector_config(params: dict | None = None, overrides: dict | None = None, mode: str = 'slam') -> DetectorConfig:
    """``DetectorConfig`` from the ``loop_closure.*`` entries of node parameters, then overrides,
    with ``mode`` forced (the evaluation mode decides it)."""
    values = detector_values(params or {})
    values.update(overrides or {})
    if values.get('mode', mode) != mode:
        log.info('detector mode %s from the parameters replaced by %s (the evaluation mode)', values['mode'], mode)
    values['mode'] = mode
    return DetectorConfig.from_dict(values)


# ------------------------------------------------------------------------------------------ running

@dataclass
class Run:
    """Per-query results of one detector pass. Map frames are indexed ``0..M-1`` (``map_ids``:
    their keyframe ids, -1 when not in the map); query arrays have one row per queried frame."""

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
    outcomes: list[str] = field(default_factory=list)      # [Q] a key of loop_closure.OUTCOMES
    outcome_counts: dict[str, int] = field(default_factory=dict)   # every processed frame, not_keyframe included
    skipped: list[tuple[int, str]] = field(default_factory=list)   # (frame, reason) of frames not taken as keyframes


def _candidate_rows(result: FrameResult, frame: int, index_of: dict[int, int]) -> list[dict]:
    return [{'query_frame': frame, 'query_stamp_ns': c.query_stamp_ns, 'query_id': c.query_id,
             'match_id': c.match_id, 'match_frame': index_of.get(c.match_id, -1), 'match_stamp_ns': c.match_stamp_ns,
             'session': 'running' if c.same_session else 'earlier', 'kind': c.kind, 'score': c.score, 'rank': c.rank, 'verified': c.verified, 'inliers': c.inliers}
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
    """One session in slam mode: every frame through ``detector.process`` in stamp order, a new
    in-memory map. ``k``: neighbours kept for recall@k (searched below the detector's window)."""
    assert config.mode == 'slam'
    db = MapDatabase(frames.descriptors.shape[1], frames.fingerprint, index_type, **(index_options or {}))
    detector = LoopClosureDetector(db, config)
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
        result = detector.process(frames.descriptors[i], stamp,
                                  position=frames.odom[i] if frames.odom is not None and
                                  np.isfinite(frames.odom[i]).all() else None,
                                  frame_id=frames.frame_ids[i], image=image,
                                  source=f'{frames.source}:{frames.topic}#{int(frames.indices[i])}')
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
    """A map with every frame of ``frames`` as a keyframe (pose from ground-truth positions or
    odometry when known)."""
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
    """The keyframes of a saved map as ``Frames`` (descriptors from the index, ground truth from the
    keyframe positions or from ``gt_spec`` matched by keyframe stamp)."""
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
    """Every query frame through ``detector.process`` against the read-only map ``db``;
    ``map_ids[m]`` is the keyframe id of map frame ``m``."""
    assert config.mode == 'localization'
    if queries.fingerprint != db.fingerprint:
        raise ConfigError(f'queries were encoded with {queries.fingerprint}, the map with {db.fingerprint}; '
                          'use the same model and weights for both')
    detector = LoopClosureDetector(db, config)
    index_of = {int(kid): m for m, kid in enumerate(map_ids)}
    col = _Collector()
    detect_ms: list[float] = []
    for i in tqdm(range(len(queries)), desc='detect', unit='frame', file=sys.stderr,
                  disable=None if progress else True):
        image = queries.images.get(i) if queries.images is not None else None
        t0 = time.perf_counter()
        result = detector.process(queries.descriptors[i], int(queries.stamps_ns[i]),
                                  frame_id=queries.frame_ids[i], image=image,
                                  source=f'{queries.source}:{queries.topic}#{int(queries.indices[i])}')
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
    """Metrics of a run: counts always; recall@k, PR curve, AUC, recall at 100% precision, F1 and
    the operating point when ground truth exists (else skipped with a warning)."""
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
    """Re-run the detector (``run_fn(config) -> Run``, on saved descriptors) over a grid of score
    thresholds x temporal-consistency lengths; recommend the setting with the highest recall whose
    precision reaches ``target_precision``. The threshold is ``false_alarm_rate`` when the base
    configuration is calibrated, else ``relative_score`` when it uses relative scores, else
    ``min_score``."""
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
    """Time per stage in milliseconds: bag read + image decode (per frame), preprocessing and
    inference (per image, batched as ``encode_batch_size`` says), detector (search, filters and,
    in slam mode, adding the keyframe; per frame)."""
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



@dataclass
class LiveRecording:
    """The node's outputs recorded during a replay: candidate rows (stamps in ns, rounded from the
    float seconds of the table) and the last pipeline diagnostics."""

    source: str
    topic: str
    rows: list[dict]
    diagnostics: dict[str, str]
    messages: int


def read_live(bag: str | Path, topic: str | None = None) -> LiveRecording:
    """Candidates (``~/candidates`` tables) and the newest ``/diagnostics`` pipeline status from a
    bag recorded with ``boq-vpr replay --record``."""
    topics = bags.list_topics(bag)
    if topic is None:
        found = [t for t in topics.values() if t.name.endswith('/candidates')
                 and t.msgtype == 'std_msgs/msg/Float64MultiArray']
        if len(found) != 1:
            raise BagError(f'{bag}: expected one recorded .../candidates topic (std_msgs/Float64MultiArray), found '
                           f'{len(found)}; name it with --live-topic. The bag has: '
                           + '; '.join(str(t) for t in topics.values()))
        topic = found[0].name
    elif topic not in topics:
        raise BagError(f'{bag}: no topic {topic!r}. The bag has: ' + '; '.join(str(t) for t in topics.values()))
    wanted = [topic] + (['/diagnostics'] if '/diagnostics' in topics else [])
    rows: list[dict] = []
    diag: dict[str, str] = {}
    n = 0
    for name, msgtype, _, msg in bags.iter_messages(bag, wanted):
        if name == topic:
            n += 1
            cols = str(msg.layout.dim[1].label).split(',') if len(msg.layout.dim) > 1 else list(CANDIDATE_COLUMNS)
            data = np.asarray(msg.data, np.float64).reshape(-1, len(cols))
            for r in data:
                row = dict(zip(cols, r.tolist()))
                row['query_stamp_ns'] = int(round(row['query_stamp'] * NS_PER_S))
                row['match_stamp_ns'] = int(round(row['match_stamp'] * NS_PER_S))
                rows.append(row)
        elif msgtype == 'diagnostic_msgs/msg/DiagnosticArray':
            for status in msg.status:
                if 'pipeline' in status.name:
                    diag = {kv.key: kv.value for kv in status.values}
    return LiveRecording(str(bag), topic, rows, diag, n)


def _nearest(stamps: np.ndarray, values: np.ndarray, tol_ns: int) -> np.ndarray:
    """Index into ``stamps`` (any order) of the stamp nearest to each value within ``tol_ns`` (-1 if none)."""
    return gtm.nearest_labels(values, stamps, np.arange(len(stamps)), tol_ns)


def live_as_run(live: LiveRecording, offline: Run, queries: Frames, map_frames: Frames,
                tol_ns: int = 1_000_000) -> tuple[Run, dict]:
    """The live candidates as a ``Run`` over the same queries as ``offline`` (the offline run gives
    the exclusion windows), ready for ``score_run``; plus what could not be matched to frames."""
    q_stamps = queries.stamps_ns[offline.query_index]
    first = {}
    for row in live.rows:
        if int(row.get('rank', 0)) == 0 and row['query_stamp_ns'] not in first:
            first[row['query_stamp_ns']] = row
    qs = np.array(sorted(first), np.int64)
    q_pos = _nearest(q_stamps, qs, tol_ns)
    m_pos = _nearest(map_frames.stamps_ns, np.array([first[s]['match_stamp_ns'] for s in qs], np.int64), tol_ns)
    accepted = np.full(len(q_stamps), -1, np.int64)
    score = np.full(len(q_stamps), np.nan)
    unmatched_queries = int((q_pos < 0).sum())
    unmatched_matches = 0
    for s, qp, mp in zip(qs, q_pos, m_pos):
        if qp < 0:
            continue
        if mp < 0:
            unmatched_matches += 1
            continue
        accepted[qp] = mp
        score[qp] = first[s]['score']
    n = len(q_stamps)
    run = Run('live', offline.config, offline.query_index.copy(), offline.cut.copy(), np.full(n, np.nan),
              np.full(n, -1, np.int64), np.full(n, np.nan), accepted, score,
              (accepted >= 0).astype(np.int64), [''] * n, offline.map_ids.copy(), np.zeros(0))
    run.mode = offline.mode
    return run, {'candidate_rows': len(live.rows), 'queries_with_candidates': len(qs),
                 'queries_not_in_bag': unmatched_queries, 'matches_not_in_map': unmatched_matches}


def compare_live(offline: Run, live: Run, queries: Frames, score_tol: float = 1e-3) -> dict:
    """Query by query: does the live node's first accepted candidate equal the offline one (same
    matched frame, score within ``score_tol``)?"""
    assert np.array_equal(offline.query_index, live.query_index)
    off, on = offline.accepted, live.accepted
    both = (off >= 0) & (on >= 0)
    same = both & (off == on) & (np.abs(np.nan_to_num(offline.accepted_score - live.accepted_score, nan=1.0))
                                 <= score_tol)
    diff = np.flatnonzero(both & ~same)
    only_off = np.flatnonzero((off >= 0) & (on < 0))
    only_live = np.flatnonzero((off < 0) & (on >= 0))
    fmt = lambda idx: [{'query_frame': int(offline.query_index[i]),
                        'query_stamp_ns': int(queries.stamps_ns[offline.query_index[i]]),
                        'offline_match_frame': int(off[i]), 'live_match_frame': int(on[i]),
                        'offline_score': as_jsonable(offline.accepted_score[i]),
                        'live_score': as_jsonable(live.accepted_score[i])} for i in idx[:50]]
    score_err = np.abs(offline.accepted_score[same] - live.accepted_score[same])
    return {'queries': int(len(off)), 'offline_accepted': int((off >= 0).sum()), 'live_accepted': int((on >= 0).sum()),
            'same': int(same.sum()), 'different_match': int(diff.size), 'offline_only': int(only_off.size),
            'live_only': int(only_live.size), 'max_score_difference': float(score_err.max()) if score_err.size else 0.0,
            'examples': {'different_match': fmt(diff), 'offline_only': fmt(only_off), 'live_only': fmt(only_live)}}
