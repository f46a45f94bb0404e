"""``boq-vpr bench loops``: what the loop-closure filters and thresholds do, on drives whose truth
is known, measured in one run with the same detector library as the node.

Drives (slam mode, one frame per second, a 60 s gap between traversals):

- ``summer``: the Nordland summer traversal alone (3576 frames): no place is revisited, so every
  loop closure is false;
- ``synthetic``: 3000 descriptors at 10 Hz of a route that never revisits a place, with a shared
  component as trained descriptors have (a slowly varying random walk plus a common vector);
- ``two_season``: the held-out section (frames 2400-3575) in summer, then in winter: every winter
  frame revisits a summer place (a true match within 2 frames).

Models: ``--models`` (default: the shipped ``resnet18_nordland`` and the untrained network of the
same configuration, whose scores have another scale). For each model and drive it reports:

1. threshold kinds side by side, one query per frame and no consistency, so that the measured
   rate of accepted loops on the drives without revisits is the false-alarm rate per query: fixed
   ``min_score``, ``relative_score`` and the calibrated ``false_alarm_rate``;
2. the filter table: the shipped ``config/vpr.yaml`` (``--params``) and what each of its filters
   adds, starting from no filter at all;
3. with ``--grid``, the grid the shipped defaults were chosen from (``GRID``).

Figures are printed and saved as JSON (``--out``)::

    boq-vpr bench loops --out bench/loops_nordland.json
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..models.checkpoint import RANDOM_WEIGHTS
from .bench_recall import DEFAULT_DATA, NORDLAND_HELD_OUT, load_frames, parse_model_spec
from .common import write_json

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PARAMS = ROOT / 'config' / 'vpr.yaml'
HELD_OUT = NORDLAND_HELD_OUT
SUMMER_ALL = range(0, 3576)
DRIVES = ('summer', 'synthetic', 'two_season')
GAP_S = 60.0

# threshold kinds compared (temporal consistency 1, every frame a keyframe)
THRESHOLDS = (
    [('min_score', v) for v in (0.5, 0.7, 0.9)] +
    [('relative_score', v) for v in (0.8, 0.9)] +
    [('false_alarm_rate', v) for v in (0.01, 0.001)])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA, help='the Nordland folder (summer/, winter/)')
    parser.add_argument('--models', nargs='+', default=['resnet18_nordland', f'resnet18_nordland:{RANDOM_WEIGHTS}'],
                        help='NAME, NAME:random or NAME:WEIGHTS (default: resnet18_nordland and its untrained twin)')
    parser.add_argument('--params', type=Path, default=DEFAULT_PARAMS,
                        help='node parameters whose loop_closure.* are the shipped defaults (default: config/vpr.yaml)')
    parser.add_argument('--drives', nargs='+', default=list(DRIVES), choices=DRIVES, help='drives to run')
    parser.add_argument('--every', type=int, default=1, help='use every n-th frame of the Nordland drives')
    parser.add_argument('--grid', action='store_true',
                        help='also run the grid the defaults were chosen from (false_alarm_rate x '
                             'temporal_consistency x keyframe_max_similarity on the first model)')
    parser.add_argument('--out', type=Path, default=Path('bench/loops_nordland.json'), help='JSON output')


# ------------------------------------------------------------------------------------------ drives

def _frames(descriptors: np.ndarray, stamps_s: np.ndarray, places: np.ndarray, name: str, fingerprint: str):
    from ..evaluation import Frames
    from ..ground_truth import GroundTruth
    n = len(descriptors)
    return Frames(np.ascontiguousarray(descriptors, np.float32), np.round(np.asarray(stamps_s) * 1e9).astype(np.int64),
                  np.arange(n), ['camera'] * n, name, '/camera/image_raw', fingerprint,
                  GroundTruth(None, np.asarray(places, np.int64), 'frame index'))


def nordland_drive(drive: str, encoder, data: Path, every: int = 1):
    """``summer`` or ``two_season`` as Frames of ``encoder``'s descriptors (1 s per frame)."""
    if drive == 'summer':
        idx = np.asarray(SUMMER_ALL[::every])
        desc = encoder.encode(load_frames(data / 'summer', SUMMER_ALL[::every]))
        stamps = np.arange(len(idx), dtype=np.float64) * every
    elif drive == 'two_season':
        idx1 = np.asarray(HELD_OUT[::every])
        summer = encoder.encode(load_frames(data / 'summer', HELD_OUT[::every]))
        winter = encoder.encode(load_frames(data / 'winter', HELD_OUT[::every]))
        desc = np.concatenate([summer, winter])
        t = np.arange(len(idx1), dtype=np.float64) * every
        stamps = np.concatenate([t, t[-1] + GAP_S + t])
        idx = np.concatenate([idx1, idx1])
    else:
        raise ConfigError(f'unknown Nordland drive {drive!r}')
    return _frames(desc, stamps, idx, f'nordland_{drive}', encoder.fingerprint)


def synthetic_drive(dim: int = 2048, n: int = 3000, rate_hz: float = 10.0, shared: float = 0.8,
                    smoothness: float = 0.98, seed: int = 0):
    """A route without revisits: ``shared`` x a common unit vector + a slowly varying AR(1) random
    walk (neighbouring frames alike, distant ones unrelated), L2-normalized."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(dim).astype(np.float32)
    common /= np.linalg.norm(common)
    walk = np.empty((n, dim), np.float32)
    z = rng.standard_normal(dim).astype(np.float32)
    innovation = np.sqrt(1 - smoothness ** 2)
    for i in range(n):
        z = smoothness * z + innovation * rng.standard_normal(dim).astype(np.float32)
        walk[i] = z
    walk /= np.linalg.norm(walk, axis=1, keepdims=True)
    desc = shared * common + np.sqrt(1 - shared ** 2) * walk
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    return _frames(desc, np.arange(n) / rate_hz, np.arange(n), 'synthetic_no_revisit', f'synthetic-{dim}')


def places_drive(places: int = 60, dim: int = 256, rate_hz: float = 10.0, seconds_per_place: float = 1.0,
                 laps: int = 2, noise: float = 0.4, shared: float = 0.5, seed: int = 0,
                 lap_speeds: tuple[float, ...] | None = None):
    """A route of ``places`` distinct places, each in view for ``seconds_per_place``, seen by a
    camera at ``rate_hz`` and driven ``laps`` times without a break. A frame is its place's random
    unit vector plus independent noise of norm ``noise`` (so two views of one place have cosine
    about 1 / (1 + noise^2)), mixed with a ``shared`` common component as trained descriptors have.
    ``lap_speeds``: the speed of each lap relative to the first (1.25: each place in view 20% less
    long). Ground truth: the place number (a correct match is the same place)."""
    rng = np.random.default_rng(seed)
    place_vec = rng.standard_normal((places, dim))
    place_vec /= np.linalg.norm(place_vec, axis=1, keepdims=True)
    common = rng.standard_normal(dim)
    common /= np.linalg.norm(common)
    speeds = lap_speeds or (1.0,) * laps
    place = np.concatenate([np.repeat(np.arange(places), max(1, int(round(seconds_per_place * rate_hz / v))))
                            for v in speeds[:laps]])
    n = place.size
    jitter = rng.standard_normal((n, dim))
    jitter *= noise / np.linalg.norm(jitter, axis=1, keepdims=True)
    own = place_vec[place] + jitter
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    desc = shared * common + np.sqrt(1 - shared ** 2) * own
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    return _frames(desc.astype(np.float32), np.arange(n) / rate_hz, place,
                   f'places_{places}x{laps}_{rate_hz:g}hz', f'synthetic-{dim}')


# ------------------------------------------------------------------------------------------ runs

def run_setting(frames, config, tolerance: int = 2) -> dict:
    """The detector over ``frames`` in slam mode with ``config``: counts, false loops, precision,
    recall and the outcome of every frame. ``tolerance``: a match is correct within this many
    ground-truth frame (or place) numbers."""
    from .. import evaluation as ev
    from ..ground_truth import Criterion
    run = ev.run_slam(frames, config, k=1, retrieval=False, progress=False)
    scored = ev.score_run(run, frames, frames, Criterion(frame_tolerance=tolerance, by='frame'), ks=(1,))
    op = scored.metrics['operating_point']
    queries = len(run.query_index)
    return {'frames': len(frames), 'keyframes': int((run.map_ids >= 0).sum()), 'queries': queries,
            'accepted': op['predicted'], 'tp': op['tp'], 'fp': op['fp'], 'positives': op['positives'],
            'precision': op['precision'], 'recall': op['recall'],
            'false_per_query': op['fp'] / queries if queries else float('nan'),
            'false_per_1000_keyframes': 1000.0 * op['fp'] / max(1, int((run.map_ids >= 0).sum())),
            'outcomes': run.outcome_counts, 'places': _places_closed(run, frames)}


def _places_closed(run, frames) -> dict:
    """Places revisited (a query keyframe with a keyframe of its place outside the exclusion
    window), how many of them got a correct loop closure at least once, and how many places got a
    wrong one."""
    gt = frames.gt.frames
    first_id: dict[int, int] = {}
    for m in np.flatnonzero(run.map_ids >= 0).tolist():
        first_id.setdefault(int(gt[m]), int(run.map_ids[m]))
    revisited, right, wrong = set(), set(), set()
    for q, cut, m in zip(run.query_index.tolist(), run.cut.tolist(), run.accepted.tolist()):
        g = int(gt[q])
        if g in first_id and (cut < 0 or first_id[g] < cut):
            revisited.add(g)
        if m >= 0:
            (right if int(gt[m]) == g else wrong).add(g)
    return {'revisited': len(revisited), 'closed': len(right & revisited), 'wrong': len(wrong)}
