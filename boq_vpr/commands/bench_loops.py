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

Two more measurements, on request:

4. ``--cost``: the time the detector adds per query keyframe on maps of ``--cost-sizes`` synthetic
   keyframes (``--cost-dim``-D, a flat index, localization mode), beside the search it does: the
   search alone (top-k as the detector asks), the detector on single keyframes
   (``sequence_length 1``) and with the shipped defaults (sequences on), on ~300 query keyframes
   that revisit a stretch of the map; p50/p90 per call, what the sequence stage adds, how many of
   the queries each accepted, and the process's resident memory (JSON key ``cost``);
5. ``--calibration``: the measured false-alarm rate per query against the requested one
   (``false_alarm_rate`` 0.01 and 0.001, ``temporal_consistency 1``, otherwise ``DetectorConfig()``
   defaults, localization mode) on maps of ``--calibration-sizes`` keyframes with queries that
   have no true match in the map: Nordland summer frames of the first ``--models`` entry (the
   queries a part of the route at least 100 frames past the map) and synthetic routes (JSON key
   ``calibration``).

6. ``drives`` (with ``--only drives``): the detector on every drive of ``DRIVE_TABLE`` (the Nordland
   drives above, summer at 10 fps, the synthetic route, a small map of 75 places, 60 places seen
   by a 10 and a 30 Hz camera, a second pass slower or faster) under each setting of
   ``DRIVE_SETTINGS`` (``false_alarm_rate`` x ``temporal_consistency``, the shipped one marked):
   accepted loops, true and false ones, precision, recall and revisited places closed (JSON key
   ``drives``).

``--only`` runs just the named sections (``tables``: 1-3; ``drives``; ``cost``; ``calibration``).

Figures are printed and saved as JSON (``--out``)::

    boq-vpr bench loops --out bench/loops_nordland.json
    OPENBLAS_NUM_THREADS=1 boq-vpr bench loops --only drives --models resnet18_nordland --out bench/loops_drives.json
    OPENBLAS_NUM_THREADS=1 boq-vpr bench loops --only cost --out bench/loops_cost.json
    OPENBLAS_NUM_THREADS=1 boq-vpr bench loops --only calibration --out bench/loops_calibration.json
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import math
import os
import subprocess
import time
from pathlib import Path

import numpy as np

from ..evaluation.benchmark import current_rss_mib, peak_rss_mib
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

SECTIONS = ('tables', 'drives', 'cost', 'calibration')
# --cost: map sizes, timed queries and untimed warm-up queries per map
COST_SIZES = (1000, 10000, 100000)
COST_QUERIES = 300
COST_WARMUP = 20
COST_RATE_HZ = 2.0
COST_NOISE = 0.3            # norm of the noise added to a revisited map descriptor (before renormalizing)
# the route's smoothness (synthetic_drive): 0.5 makes neighbouring keyframes (0.5 s apart) distinct
# places, so that the revisit is found; at synthetic_drive's default 0.98 a place spans tens of
# keyframes and neither detector accepts the revisit (nothing stands out of its own stretch)
COST_SMOOTHNESS = 0.5
COST_CHUNK = 10000          # keyframes added to the map at a time
# --calibration: map sizes, requested rates, data sources
CALIBRATION_SIZES = (50, 200, 1000, 10000)
CALIBRATION_RATES = (0.01, 0.001)
CALIBRATION_SOURCES = ('nordland', 'synthetic')
CALIBRATION_NORDLAND_QUERIES = 1500     # at most
CALIBRATION_NORDLAND_MARGIN = 100       # frames between the map and the first query
CALIBRATION_NORDLAND_MIN_QUERIES = 200  # fewer available queries: no row
CALIBRATION_SYNTHETIC_QUERIES = 2000
CALIBRATION_SYNTHETIC_DIM = 256
NORDLAND_FRAMES = 3576


def _sections_arg(text: str) -> set[str]:
    names = {t.strip() for t in text.split(',') if t.strip()}
    bad = sorted(names - set(SECTIONS))
    if not names or bad:
        raise argparse.ArgumentTypeError(f'expected a comma-separated list of {", ".join(SECTIONS)}, got {text!r}')
    return names


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
    parser.add_argument('--only', type=_sections_arg, default=None, metavar='SECTION[,SECTION...]',
                        help=f'run only these sections, comma-separated, of {", ".join(SECTIONS)} (tables: the '
                             'threshold, filter and grid tables of the drives; default: tables, plus cost and '
                             'calibration when asked for)')
    g = parser.add_argument_group('cost (--cost)')
    g.add_argument('--cost', action='store_true',
                   help='the time the detector adds per query keyframe (single keyframes and sequences) beside the '
                        'search, on synthetic maps of --cost-sizes keyframes, and the memory it holds')
    g.add_argument('--cost-sizes', type=int, nargs='+', default=list(COST_SIZES), help='map sizes in keyframes')
    g.add_argument('--cost-dim', type=int, default=2048, help='descriptor dimension (default: 2048)')
    g.add_argument('--cost-queries', type=int, default=COST_QUERIES, help='timed query keyframes per map')
    g.add_argument('--cost-warmup', type=int, default=COST_WARMUP, help='untimed query keyframes first')
    g.add_argument('--cost-smoothness', type=float, default=COST_SMOOTHNESS,
                   help=f'smoothness of the synthetic route (default {COST_SMOOTHNESS}; see synthetic_drive)')
    g = parser.add_argument_group('calibration (--calibration)')
    g.add_argument('--calibration', action='store_true',
                   help='measured false-alarm rate per query against the requested one, on maps of '
                        '--calibration-sizes keyframes with queries that revisit nothing')
    g.add_argument('--calibration-sizes', type=int, nargs='+', default=list(CALIBRATION_SIZES),
                   help='map sizes in keyframes')
    g.add_argument('--calibration-rates', type=float, nargs='+', default=list(CALIBRATION_RATES),
                   help='requested false_alarm_rate values')
    g.add_argument('--calibration-sources', nargs='+', default=list(CALIBRATION_SOURCES), choices=CALIBRATION_SOURCES,
                   help='nordland (summer frames of the first --models entry) and/or synthetic routes')


# ------------------------------------------------------------------------------------------ drives

def _frames(descriptors: np.ndarray, stamps_s: np.ndarray, places: np.ndarray, name: str, fingerprint: str):
    from ..evaluation import Frames
    from ..inputs.ground_truth import GroundTruth
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


# Every drive of the drives table (--only drives): (name, what it is, correct within this many
# ground-truth frames or places)
DRIVE_TABLE = (
    ('two_season', 'Nordland 2400-3575, summer then winter, 1 fps', 2),
    ('summer', 'Nordland summer alone (no revisit), 1 fps', 2),
    ('summer_10fps', 'Nordland summer alone (no revisit), 10 fps', 2),
    ('synthetic', 'synthetic route without revisits, 3000 frames at 10 Hz, 2048-D', 2),
    ('small_map', '75 distinct places (64-D) driven twice at 1 Hz', 0),
    ('camera_10hz', '60 places, each in view 1 s, driven twice, 10 Hz camera', 0),
    ('camera_30hz', '60 places, each in view 1 s, driven twice, 30 Hz camera', 0),
    ('slower_0.8', 'as camera_10hz, the second pass at 0.8x speed (frames repeated)', 0),
    ('faster_1.25', 'as camera_10hz, the second pass at 1.25x speed (frames skipped)', 0),
)
# the settings the defaults were chosen from (--only drives): false_alarm_rate x temporal_consistency
DRIVE_SETTINGS = {'false_alarm_rate': (0.01, 0.001), 'temporal_consistency': (1, 2, 3)}


def table_drive(name: str, encoder, data: Path):
    """The frames of one drive of ``DRIVE_TABLE``."""
    if name in ('two_season', 'summer'):
        return nordland_drive(name, encoder, data)
    if name == 'summer_10fps':
        frames = nordland_drive('summer', encoder, data)
        frames.stamps_ns = np.round(np.arange(len(frames)) * 0.1e9).astype(np.int64)
        return frames
    if name == 'synthetic':
        return synthetic_drive(2048)
    if name == 'small_map':
        return places_drive(75, 64, rate_hz=1.0, laps=2, noise=0.4, shared=0.0)
    if name in ('camera_10hz', 'camera_30hz'):
        return places_drive(60, 256, rate_hz=10.0 if name == 'camera_10hz' else 30.0, laps=2)
    speed = float(name.split('_')[1])
    return places_drive(60, 256, rate_hz=10.0, laps=2, lap_speeds=(1.0, speed))


def run_drives(args: argparse.Namespace) -> dict:
    """The shipped detector on every drive of DRIVE_TABLE, and the settings of DRIVE_SETTINGS."""
    import itertools
    from .. import evaluation as ev
    from ..encoder import Encoder
    base = ev.detector_config(ev.load_params(args.params), {}, 'slam')
    name, weights = parse_model_spec(args.models[0])
    encoder = Encoder(name, weights=weights, backend='torch', device='cpu', precision='fp32', batch_size=64)
    keys = list(DRIVE_SETTINGS)
    settings = []
    for values in itertools.product(*(DRIVE_SETTINGS[k] for k in keys)):
        cfg = dataclasses.replace(base, **dict(zip(keys, values)))
        label = ', '.join(f'{k} {v:g}' for k, v in zip(keys, values)) + (' (shipped)' if cfg == base else '')
        settings.append((label, cfg))
    rows = []
    for drive, what, tolerance in DRIVE_TABLE:
        frames = table_drive(drive, encoder, args.data)
        for label, cfg in settings:
            t0 = time.perf_counter()
            r = run_setting(frames, cfg, tolerance)
            row = {'drive': drive, 'what': what, 'setting': label, 'tolerance': tolerance,
                   'seconds': time.perf_counter() - t0, **r}
            rows.append(row)
            places = r['places']
            print(f'drives {drive:<13} {label:<46} keyframes {r["keyframes"]:>5} accepted {r["accepted"]:>4} '
                  f'TP {r["tp"]:>4} FP {r["fp"]:>3} precision {r["precision"]:.3f} recall {r["recall"]:.3f} '
                  f'places closed {places["closed"]}/{places["revisited"]} (wrong {places["wrong"]})', flush=True)
    return {'detector': base.to_dict(), 'rows': rows}


# ------------------------------------------------------------------------------------------ runs

def run_setting(frames, config, tolerance: int = 2) -> dict:
    """The detector over ``frames`` in slam mode with ``config``: counts, false loops, precision,
    recall and the outcome of every frame. ``tolerance``: a match is correct within this many
    ground-truth frame (or place) numbers."""
    from .. import evaluation as ev
    from ..inputs.ground_truth import Criterion
    run = ev.run_slam(frames, config, k=1, retrieval=False, progress=False)
    scored = ev.score_run(run, frames, frames, Criterion(frame_tolerance=tolerance, by='frame'), ks=(1,))
    op = scored.metrics['operating_point']
    queries = len(run.query_index)
    return {'frames': len(frames), 'keyframes': int((run.map_ids >= 0).sum()), 'queries': queries,
            'accepted': op['predicted'], 'tp': op['tp'], 'fp': op['fp'], 'positives': op['positives'],
            'precision': op['precision'], 'recall': op['recall'],
            'false_per_query': op['fp'] / queries if queries else float('nan'),
            'false_per_1000_keyframes': 1000.0 * op['fp'] / max(1, int((run.map_ids >= 0).sum())),
            'outcomes': run.outcome_counts, 'places': _places_closed(run, frames, tolerance)}


def _places_closed(run, frames, tolerance: int = 0) -> dict:
    """Places revisited (a query keyframe with a keyframe of its place outside the exclusion
    window), how many of them got a correct loop closure (within ``tolerance`` ground-truth
    numbers) at least once, and how many places got a wrong one."""
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
            (right if abs(int(gt[m]) - g) <= tolerance else wrong).add(g)
    return {'revisited': len(revisited), 'closed': len(right & revisited), 'wrong': len(wrong)}


# ------------------------------------------------------------------------------------------ tables

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


def run_tables(args: argparse.Namespace) -> dict:
    """Sections 1-3 (threshold kinds, filters, --grid) over --models and --drives."""
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
    return results


# ------------------------------------------------------------------------------------------ helpers

def rss_mb() -> float:
    """The process's resident memory now, in MiB; the peak where /proc is absent."""
    now = current_rss_mib()
    return now if math.isfinite(now) else peak_rss_mib()


def percentiles(ms) -> dict:
    """p50, p90, mean, max and count of per-call times in milliseconds."""
    a = np.asarray(ms, np.float64)
    if a.size == 0:
        return {'n': 0, 'p50': math.nan, 'p90': math.nan, 'mean': math.nan, 'max': math.nan}
    return {'n': int(a.size), 'p50': float(np.percentile(a, 50)), 'p90': float(np.percentile(a, 90)),
            'mean': float(a.mean()), 'max': float(a.max())}


def provenance() -> dict:
    """What was measured: the commit, whether the detector's sources differ from it, the BLAS
    threads asked for and the load of the machine."""
    import hashlib

    def git(*cmd):
        try:
            out = subprocess.run(['git', *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10)
            return out.stdout if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None
    paths = ('--', 'boq_vpr/detection', 'boq_vpr/map')
    dirty = git('status', '--porcelain', *paths)
    diff = git('diff', 'HEAD', *paths)
    head = git('rev-parse', 'HEAD')
    return {'head': head.strip() if head else None,
            'detector_or_map_modified': None if dirty is None else bool(dirty.strip()),
            'modified_files': [line[3:] for line in (dirty or '').splitlines() if line.strip()],
            'modified_diff_sha256': hashlib.sha256(diff.encode()).hexdigest() if diff else None,
            'openblas_num_threads': os.environ.get('OPENBLAS_NUM_THREADS'),
            'omp_num_threads': os.environ.get('OMP_NUM_THREADS'),
            'cpus': os.cpu_count(), 'loadavg_start': list(os.getloadavg())}


def build_flat_map(descriptors: np.ndarray, stamps_ns: np.ndarray, session: str = 'map',
                   chunk: int = COST_CHUNK):
    """An in-memory flat MapDatabase of these keyframes (ids 0..N-1 in order), added in chunks."""
    from ..map import Keyframe, MapDatabase
    db = MapDatabase(descriptors.shape[1], 'bench', 'flat')
    for lo in range(0, len(descriptors), chunk):
        hi = min(lo + chunk, len(descriptors))
        db.add(descriptors[lo:hi], [Keyframe(-1, int(t), session=session) for t in stamps_ns[lo:hi]])
    return db


def revisit_queries(descriptors: np.ndarray, stamps_ns: np.ndarray, count: int, rate_hz: float = COST_RATE_HZ,
                    noise: float = COST_NOISE, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(descriptors, stamps_ns, true map ids) of ``count`` query keyframes revisiting the middle of
    the route: the map descriptors with Gaussian noise of norm ``noise``, renormalized, at
    ``rate_hz`` after the map's last stamp."""
    n = len(descriptors)
    if count > n:
        raise ConfigError(f'{count} revisit queries need a map of at least as many keyframes, got {n}')
    start = max(0, n // 2 - count // 2)
    truth = np.arange(start, start + count)
    rng = np.random.default_rng(seed)
    jitter = rng.standard_normal((count, descriptors.shape[1]))
    jitter *= noise / np.linalg.norm(jitter, axis=1, keepdims=True)
    q = descriptors[truth].astype(np.float64) + jitter
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    stamps = int(stamps_ns[-1]) + np.round(np.arange(1, count + 1) / rate_hz * 1e9).astype(np.int64)
    return q.astype(np.float32), stamps, truth


# ------------------------------------------------------------------------------------------ --cost

def cost_configs():
    """(name, config) of the detectors timed: single keyframes, and the shipped defaults (sequences)."""
    from ..detection import DetectorConfig
    return [('single', DetectorConfig(mode='localization', sequence_length=1)),
            ('sequence', DetectorConfig(mode='localization'))]


def _sequence_state(det) -> dict:
    """What the sequence stage holds: its recent queries and the cached map metadata blocks."""
    seq = getattr(det, 'sequence', None)
    if seq is None:
        return {}
    queries = list(seq.queries)
    blocks = list(seq.timeline._blocks.values())
    nbytes = sum(q.descriptor.nbytes + q.seeds.nbytes * 2 + q.seed_scores.nbytes * 2 for q in queries)
    nbytes += sum(sum(a.nbytes for a in blk) for blk in blocks)
    return {'queries_held': len(queries), 'metadata_blocks': len(blocks), 'cache_mb': nbytes / 2 ** 20}


def cost_at_size(n: int, dim: int = 2048, queries: int = COST_QUERIES, warmup: int = COST_WARMUP,
                 rate_hz: float = COST_RATE_HZ, noise: float = COST_NOISE, smoothness: float = COST_SMOOTHNESS,
                 seed: int = 0) -> dict:
    """The search alone, the detector on single keyframes and with sequences (the defaults), in
    localization mode on one flat map of ``n`` synthetic keyframes, over ``warmup`` + ``queries``
    query keyframes that revisit the middle of the map. The three are called in turn on each
    query (the same conditions for all three); only the last ``queries`` are timed."""
    from ..detection import LoopClosureDetector
    from ..detection.calibration import COMPLETE_MAX
    t0 = time.perf_counter()
    rss = {'start': rss_mb()}
    frames = synthetic_drive(dim, n=n, rate_hz=rate_hz, smoothness=smoothness, seed=seed)
    q, q_stamps, truth = revisit_queries(frames.descriptors, frames.stamps_ns, warmup + queries, rate_hz, noise)
    db = build_flat_map(frames.descriptors, frames.stamps_ns)
    del frames
    build_s = time.perf_counter() - t0
    rss['map_built'] = rss_mb()
    try:
        configs = cost_configs()
        base = configs[0][1]
        # the search the detector does: top_k, calibration_k, or the whole map when it is small
        k = max(base.top_k, base.calibration_k, n if n <= COMPLETE_MAX else 0)
        detectors = {}
        # warm-up: the search, then each detector on its own (the memory each takes, in turn)
        for i in range(warmup):
            db.search(q[i][None], k)
        rss['after_search_warmup'] = rss_mb()
        for name, cfg in configs:
            det = detectors[name] = LoopClosureDetector(db, cfg)
            for i in range(warmup):
                det.process(q[i], int(q_stamps[i]))
            rss[f'after_{name}_warmup'] = rss_mb()
        ms = {'search': [], **{name: [] for name in detectors}}
        accepted = {name: 0 for name in detectors}
        correct = {name: 0 for name in detectors}
        outcomes = {name: {} for name in detectors}
        radius = base.calibration_radius
        for i in range(warmup, warmup + queries):
            t = time.perf_counter()
            db.search(q[i][None], k)
            ms['search'].append((time.perf_counter() - t) * 1e3)
            for name, det in detectors.items():
                t = time.perf_counter()
                r = det.process(q[i], int(q_stamps[i]))
                ms[name].append((time.perf_counter() - t) * 1e3)
                outcomes[name][r.outcome] = outcomes[name].get(r.outcome, 0) + 1
                if r.candidates:
                    accepted[name] += 1
                    correct[name] += int(abs(r.candidates[0].match_id - int(truth[i])) <= radius)
        rss['end'] = rss_mb()
        seq_state = _sequence_state(detectors['sequence'])
    finally:
        db.close()
    # the map freed: nothing refers to it any more
    del detectors, det, db
    gc.collect()
    rss['after_close'] = rss_mb()
    lat = {name: percentiles(v) for name, v in ms.items()}
    single, seq = np.asarray(ms['single']), np.asarray(ms['sequence'])
    added = {'p50': lat['sequence']['p50'] - lat['single']['p50'], 'p90': lat['sequence']['p90'] - lat['single']['p90'],
             'ratio_p50': lat['sequence']['p50'] / lat['single']['p50'],
             'ratio_p90': lat['sequence']['p90'] / lat['single']['p90'],
             # the same query through both, paired
             'paired_p50': float(np.percentile(seq - single, 50)), 'paired_p90': float(np.percentile(seq - single, 90))}
    return {'keyframes': n, 'dim': dim, 'queries': queries, 'warmup': warmup, 'search_k': k,
            'latency_ms': lat, 'added_by_sequence_ms': added,
            'accepted': accepted, 'accepted_correct': correct, 'correct_within_ids': radius, 'outcomes': outcomes,
            'rss_mb': rss, 'rss_added_by_sequence_warmup_mb': rss['after_sequence_warmup'] - rss['after_single_warmup'],
            'rss_added_while_timed_mb': rss['end'] - rss['after_sequence_warmup'],
            'sequence_state': seq_state, 'build_s': build_s, 'seconds': time.perf_counter() - t0,
            'loadavg_after': list(os.getloadavg())}


def format_cost_row(r: dict) -> str:
    lat, add, rss = r['latency_ms'], r['added_by_sequence_ms'], r['rss_mb']
    q = r['queries']
    return (f'cost  keyframes {r["keyframes"]:>6}  search p50 {lat["search"]["p50"]:7.2f} '
            f'p90 {lat["search"]["p90"]:7.2f} ms'
            f'  single p50 {lat["single"]["p50"]:7.2f} p90 {lat["single"]["p90"]:7.2f}'
            f'  sequence p50 {lat["sequence"]["p50"]:7.2f} p90 {lat["sequence"]["p90"]:7.2f}'
            f'  added by sequences p50 {add["p50"]:+6.2f} p90 {add["p90"]:+6.2f} ms (x{add["ratio_p50"]:.2f} p50,'
            f' x{add["ratio_p90"]:.2f} p90)'
            f'  accepted single {r["accepted"]["single"]}/{q} sequence {r["accepted"]["sequence"]}/{q}'
            f' (correct {r["accepted_correct"]["single"]}, {r["accepted_correct"]["sequence"]})'
            f'  RSS MiB map {rss["map_built"]:.0f} -> single {rss["after_single_warmup"]:.0f}'
            f' -> sequence {rss["after_sequence_warmup"]:.0f} -> end {rss["end"]:.0f}'
            f' (sequence cache {r["sequence_state"].get("cache_mb", math.nan):.1f} MiB)')


def cost_table(sizes, dim: int = 2048, queries: int = COST_QUERIES, warmup: int = COST_WARMUP,
               smoothness: float = COST_SMOOTHNESS, printer=print) -> dict:
    """``cost_at_size`` per map size, one printed line each."""
    from ..detection import DetectorConfig
    if min(sizes) < 1 or dim < 2 or queries < 1 or warmup < 0 or not 0 <= smoothness < 1:
        raise ConfigError('--cost-sizes, --cost-dim and --cost-queries must be positive, --cost-warmup >= 0, '
                          '--cost-smoothness in [0, 1)')
    out = {'settings': {'dim': dim, 'queries': queries, 'warmup': warmup, 'rate_hz': COST_RATE_HZ,
                        'noise': COST_NOISE, 'smoothness': smoothness, 'index': 'flat', 'mode': 'localization',
                        'detectors': {'search': 'MapDatabase.search alone, top-k as the detector asks',
                                      **{name: cfg.to_dict() for name, cfg in cost_configs()}},
                        'defaults': DetectorConfig().to_dict()},
           'rows': []}
    for n in sizes:
        row = cost_at_size(int(n), dim, queries, warmup, smoothness=smoothness)
        out['rows'].append(row)
        printer(format_cost_row(row), flush=True)
    return out


# ------------------------------------------------------------------------------------------ --calibration

def calibration_config(rate: float):
    """Localization mode, ``false_alarm_rate`` = ``rate``, every query decides alone
    (``temporal_consistency 1``), otherwise ``DetectorConfig()``'s defaults."""
    from ..detection import DetectorConfig
    return DetectorConfig(mode='localization', temporal_consistency=1, false_alarm_rate=float(rate))


def binomial_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a rate of ``k`` events in ``n`` trials."""
    from scipy.stats import beta
    if n <= 0:
        return math.nan, math.nan
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def false_alarm_row(db, queries: np.ndarray, stamps_ns: np.ndarray, rate: float) -> dict:
    """Every query through a fresh detector at ``rate``; none has a true match in ``db``, so
    every accepted query is a false alarm."""
    from ..detection import LoopClosureDetector
    det = LoopClosureDetector(db, calibration_config(rate))
    hits = np.zeros(len(queries), bool)
    for i, (q, t) in enumerate(zip(queries, stamps_ns)):
        hits[i] = bool(det.process(q, int(t)).candidates)
    n, k = len(queries), int(hits.sum())
    lo, hi = binomial_interval(k, n)
    measured = k / n if n else math.nan
    # runs of consecutive accepted queries (one stretch of the route that looked like the map)
    episodes = int(np.count_nonzero(hits & ~np.r_[False, hits[:-1]]))
    return {'keyframes': len(db), 'queries': n, 'accepted': k, 'measured_rate': measured, 'requested_rate': rate,
            'ratio': measured / rate, 'measured_rate_ci95': [lo, hi], 'episodes': episodes,
            'outcomes': {o: c for o, c in det.outcome_counts.items()}}


def format_calibration_row(r: dict) -> str:
    lo, hi = r['measured_rate_ci95']
    outcomes = ', '.join(f'{o} {c}' for o, c in r['outcomes'].items() if c)
    return (f'calibration  {r["source"]:<9} keyframes {r["keyframes"]:>5}  queries {r["queries"]:>4}  requested '
            f'{r["requested_rate"]:<6g} accepted {r["accepted"]:>4}  measured {r["measured_rate"]:.4f} '
            f'[95% {lo:.4f}-{hi:.4f}]  measured/requested {r["ratio"]:5.2f}  episodes {r["episodes"]:>3}  '
            f'outcomes: {outcomes}')


def _map_and_rows(source: str, map_desc, map_stamps, q_desc, q_stamps, rates, printer, extra: dict) -> list[dict]:
    db = build_flat_map(map_desc, map_stamps)
    rows = []
    try:
        for rate in rates:
            t0 = time.perf_counter()
            row = {'source': source, **false_alarm_row(db, q_desc, q_stamps, rate), **extra,
                   'seconds': time.perf_counter() - t0, 'loadavg_after': list(os.getloadavg())}
            rows.append(row)
            printer(format_calibration_row(row), flush=True)
    finally:
        db.close()
    return rows


def calibration_synthetic(sizes, rates=CALIBRATION_RATES, queries: int = CALIBRATION_SYNTHETIC_QUERIES,
                          dim: int = CALIBRATION_SYNTHETIC_DIM, printer=print) -> list[dict]:
    """Rows of the synthetic source: the map a route of ``synthetic_drive(seed=0)`` at 2 Hz, the
    queries another route (``seed=1``) after it."""
    route = synthetic_drive(dim, n=queries, rate_hz=2.0, seed=1)
    rows = []
    for n in sizes:
        m = synthetic_drive(dim, n=int(n), rate_hz=2.0, seed=0)
        stamps = int(m.stamps_ns[-1]) + int(GAP_S * 1e9) + route.stamps_ns
        rows += _map_and_rows('synthetic', m.descriptors, m.stamps_ns, route.descriptors, stamps, rates, printer,
                              {'map': f'synthetic_drive({dim}, n={n}, rate_hz=2, seed=0)',
                               'query_route': f'synthetic_drive({dim}, n={queries}, rate_hz=2, seed=1)'})
    return rows


def nordland_calibration_plan(sizes, max_queries: int = CALIBRATION_NORDLAND_QUERIES,
                              frames: int = NORDLAND_FRAMES) -> list[tuple[int, range | None, str]]:
    """(size, query frames or None, note) per map size: the map is summer frames [0:N], the
    queries summer frames from ``CALIBRATION_NORDLAND_MARGIN`` frames past its end (the summer
    traversal revisits nothing; winter would revisit the map, so it is never used)."""
    plan = []
    for n in sizes:
        n = int(n)
        first = n + CALIBRATION_NORDLAND_MARGIN
        last = min(frames, first + max_queries)
        if n > frames:
            plan.append((n, None, f'no row: the summer traversal has {frames} frames, fewer than {n}'))
        elif last - first < CALIBRATION_NORDLAND_MIN_QUERIES:
            plan.append((n, None, f'no row: fewer than {CALIBRATION_NORDLAND_MIN_QUERIES} summer frames remain '
                                  f'{CALIBRATION_NORDLAND_MARGIN} frames past a map of {n}'))
        else:
            plan.append((n, range(first, last), ''))
    return plan


def calibration_nordland(encoder, data: Path, sizes, rates=CALIBRATION_RATES, printer=print) -> tuple[list, list]:
    """Rows of the nordland source (``encoder``'s descriptors of the summer traversal, 1 s per
    frame; the queries 60 s after the map), and the notes of the sizes without a row."""
    plan = nordland_calibration_plan(sizes)
    notes = [{'keyframes': n, 'note': note} for n, r, note in plan if r is None]
    for note in notes:
        printer(f'calibration  nordland  keyframes {note["keyframes"]:>5}  {note["note"]}', flush=True)
    runs = [(n, r) for n, r, _ in plan if r is not None]
    if not runs:
        return [], notes
    end = max(r.stop for _, r in runs)
    desc = encoder.encode(load_frames(data / 'summer', range(0, end)))
    desc = np.ascontiguousarray(desc, np.float32)
    rows = []
    for n, qr in runs:
        map_stamps = np.arange(n, dtype=np.int64) * 1_000_000_000
        q_stamps = map_stamps[-1] + int(GAP_S * 1e9) + np.arange(len(qr), dtype=np.int64) * 1_000_000_000
        rows += _map_and_rows('nordland', desc[:n], map_stamps, desc[qr.start:qr.stop], q_stamps, rates, printer,
                              {'map': f'summer frames 0:{n}', 'query_frames': f'summer frames {qr.start}:{qr.stop}',
                               'model': encoder.fingerprint})
    return rows, notes


def calibration_table(sizes, rates=CALIBRATION_RATES, sources=CALIBRATION_SOURCES, encoder=None,
                      data: Path | None = None, synthetic_queries: int = CALIBRATION_SYNTHETIC_QUERIES,
                      printer=print) -> dict:
    """The calibration rows of each source (nordland needs ``encoder`` and ``data``)."""
    if min(sizes) < 2 or not all(0 < r <= 0.5 for r in rates):
        raise ConfigError('--calibration-sizes must be >= 2 and --calibration-rates in (0, 0.5]')
    out = {'settings': {'detector': {f'{r:g}': calibration_config(r).to_dict() for r in rates},
                        'gap_s': GAP_S, 'index': 'flat'},
           'rows': [], 'notes': []}
    for source in sources:
        t0 = time.perf_counter()
        if source == 'nordland':
            if encoder is None or data is None:
                raise ConfigError('the nordland calibration rows need an encoder and the Nordland data')
            rows, notes = calibration_nordland(encoder, data, sizes, rates, printer)
            out['settings']['nordland'] = {'model': encoder.fingerprint, 'seconds_per_frame': 1.0,
                                           'max_queries': CALIBRATION_NORDLAND_QUERIES,
                                           'margin_frames': CALIBRATION_NORDLAND_MARGIN}
            out['notes'] += [{'source': 'nordland', **n} for n in notes]
        elif source == 'synthetic':
            rows = calibration_synthetic(sizes, rates, synthetic_queries, printer=printer)
            out['settings']['synthetic'] = {'dim': CALIBRATION_SYNTHETIC_DIM, 'queries': synthetic_queries,
                                            'rate_hz': 2.0}
        else:
            raise ConfigError(f'unknown calibration source {source!r}')
        out['rows'] += rows
        out.setdefault('seconds', {})[source] = time.perf_counter() - t0
    return out


# ------------------------------------------------------------------------------------------ command

def sections(args: argparse.Namespace) -> set[str]:
    """The sections to run: --only, else the tables plus --cost and --calibration when given."""
    if args.only:
        return set(args.only)
    return {'tables'} | ({'cost'} if args.cost else set()) | ({'calibration'} if args.calibration else set())


def run(args: argparse.Namespace) -> int:
    from .. import evaluation as ev
    todo = sections(args)
    t_start = time.perf_counter()
    results: dict = {'sections': [s for s in SECTIONS if s in todo], 'provenance': provenance()}
    if 'tables' in todo:
        results.update(run_tables(args))
    if 'drives' in todo:
        results['drives'] = run_drives(args)
    if 'cost' in todo:
        t0 = time.perf_counter()
        results['cost'] = cost_table(args.cost_sizes, args.cost_dim, args.cost_queries, args.cost_warmup,
                                     args.cost_smoothness)
        results['cost']['seconds'] = time.perf_counter() - t0
    if 'calibration' in todo:
        encoder = None
        if 'nordland' in args.calibration_sources:
            from ..encoder import Encoder
            name, weights = parse_model_spec(args.models[0])
            encoder = Encoder(name, weights=weights, backend='torch', device='cpu', precision='fp32', batch_size=64)
        t0 = time.perf_counter()
        results['calibration'] = calibration_table(args.calibration_sizes, args.calibration_rates,
                                                   args.calibration_sources, encoder, args.data)
        results['calibration']['seconds_total'] = time.perf_counter() - t0
    results['provenance']['loadavg_end'] = list(os.getloadavg())
    results['provenance']['peak_rss_mb'] = peak_rss_mib()
    results['wall_s'] = time.perf_counter() - t_start
    write_json(args.out, ev.as_jsonable(results))
    print(f'saved {args.out} ({results["wall_s"]:.0f} s)')
    return 0
