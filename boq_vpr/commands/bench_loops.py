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


# ------------------------------------------------------------------------------------------ runs

def run_setting(frames, config) -> dict:
    """The detector over ``frames`` in slam mode with ``config``: counts, false loops, precision,
    recall and the outcome of every frame."""
    from .. import evaluation as ev
    from ..ground_truth import Criterion
    run = ev.run_slam(frames, config, k=1, retrieval=False, progress=False)
    scored = ev.score_run(run, frames, frames, Criterion(frame_tolerance=2, by='frame'), ks=(1,))
    op = scored.metrics['operating_point']
    queries = len(run.query_index)
    return {'frames': len(frames), 'keyframes': int((run.map_ids >= 0).sum()), 'queries': queries,
            'accepted': op['predicted'], 'tp': op['tp'], 'fp': op['fp'], 'positives': op['positives'],
            'precision': op['precision'], 'recall': op['recall'],
            'false_per_query': op['fp'] / queries if queries else float('nan'),
            'false_per_1000_keyframes': 1000.0 * op['fp'] / max(1, int((run.map_ids >= 0).sum())),
            'outcomes': run.outcome_counts}


# the grid the shipped defaults were chosen from (--grid)
GRID = {'false_alarm_rate': (0.3, 0.1, 0.03, 0.01, 0.001), 'temporal_consistency': (2, 3, 4, 5),
        'keyframe_max_similarity': (1.0, 0.9, 0.8)}


def grid_configs(base):
    """(label, config) over GRID, everything else as shipped."""
    import itertools
    keys = list(GRID)
    for values in itertools.product(*(GRID[k] for k in keys)):
        change = dict(zip(keys, values))
        yield ', '.join(f'{k} {v:g}' for k, v in change.items()), dataclasses.replace(base, **change)


def threshold_configs(base):
    """(label, config): one query per frame, consistency off, one threshold kind at a time."""
    plain = dataclasses.replace(base, temporal_consistency=1, keyframe_min_time_s=0.0, keyframe_min_distance_m=0.0,
                                keyframe_max_similarity=1.0, min_score=-1.0, relative_score=0.0, false_alarm_rate=0.0,
                                geometric_verification=False)
    out = []
    for key, value in THRESHOLDS:
        out.append((f'{key} {value:g}', dataclasses.replace(plain, **{key: value})))
    return out


def filter_configs(base):
    """(label, config): no filter, then the shipped filters added one at a time, then the shipped set."""
    none = dataclasses.replace(base, temporal_consistency=1, keyframe_min_time_s=0.0, keyframe_min_distance_m=0.0,
                               keyframe_max_similarity=1.0, min_score=-1.0, relative_score=0.0, false_alarm_rate=0.0,
                               nms_radius=0, geometric_verification=False)
    steps = [('no filter', none)]
    additions = [
        ('keyframe selection', {k: getattr(base, k) for k in ('keyframe_min_time_s', 'keyframe_min_distance_m',
                                                              'keyframe_max_similarity')}),
        (f'min_score {base.min_score:g}', {'min_score': base.min_score}),
        (f'relative_score {base.relative_score:g}', {'relative_score': base.relative_score}),
        (f'false_alarm_rate {base.false_alarm_rate:g}', {'false_alarm_rate': base.false_alarm_rate}),
        (f'temporal_consistency {base.temporal_consistency}', {'temporal_consistency': base.temporal_consistency}),
        (f'nms_radius {base.nms_radius}', {'nms_radius': base.nms_radius}),
    ]
    current = none
    for label, change in additions:
        if all(getattr(current, k) == v for k, v in change.items()):
            continue   # the shipped setting leaves this filter off
        current = dataclasses.replace(current, **change)
        steps.append(('+ ' + label, current))
    steps.append(('shipped config (all of the above)', base))
    return steps


def run(args: argparse.Namespace) -> int:
    from .. import evaluation as ev
    from ..encoder import Encoder
    params = ev.load_params(args.params)
    base = ev.detector_config(params, {}, 'slam')
    results: dict = {'params': str(args.params), 'detector': base.to_dict(), 'every': args.every, 'runs': []}
    t_start = time.perf_counter()
    for spec in args.models:
        name, weights = parse_model_spec(spec)
        enc = Encoder(name, weights=weights, backend='torch', device='cpu', precision='fp32', batch_size=64)
        label = f'{name} ({"random weights" if enc.weights is None else "shipped" if weights is None else weights})'
        drives = {}
        for drive in args.drives:
            drives[drive] = (synthetic_drive(enc.descriptor_dim) if drive == 'synthetic'
                             else nordland_drive(drive, enc, args.data, args.every))
        tables = [('thresholds', threshold_configs(base)), ('filters', filter_configs(base))]
        if args.grid and spec == args.models[0]:
            tables.append(('grid', list(grid_configs(base))))
        for table, configs in tables:
            for setting, cfg in configs:
                for drive, frames in drives.items():
                    if drive == 'synthetic' and spec != args.models[0]:
                        continue   # synthetic descriptors do not depend on the model
                    row = {'table': table, 'model': label, 'drive': drive, 'setting': setting,
                           **run_setting(frames, cfg)}
                    results['runs'].append(row)
                    print(f'{table:<10} {label:<36} {drive:<10} {setting:<72} keyframes {row["keyframes"]:>5} '
                          f'accepted {row["accepted"]:>5} TP {row["tp"]:>5} FP {row["fp"]:>5} '
                          f'precision {row["precision"]:.3f} recall {row["recall"]:.3f} '
                          f'false/query {row["false_per_query"]:.4f}', flush=True)
    results['seconds'] = time.perf_counter() - t_start
    write_json(args.out, ev.as_jsonable(results))
    print(f'saved {args.out}')
    return 0
