"""``boq-vpr bench loops``: what the loop-closure filters and thresholds do.

Measured on drives whose truth is known, measured in one run with the same detector library as the
node.

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
   that revisit a stretch of the map; p50/p90 per call, what the sequence stage adds (the difference
   of the two detectors, and the stage's own time within the calls, ``sequence_stage``), how many of
   the queries each accepted, and the process's resident memory (JSON key ``cost``); then the same in
   slam mode on sessions of ``--cost-slam-sizes`` keyframes, where the map is the running session
   (``slam_rows``);
5. ``--calibration``: the measured false-alarm rate per query against the requested one
   (``false_alarm_rate`` 0.01 and 0.001, ``temporal_consistency 1``, otherwise ``DetectorConfig()``
   defaults, localization mode) on maps of ``--calibration-sizes`` keyframes with queries that
   have no true match in the map: Nordland frames of the first ``--models`` entry (maps from frames
   0, 1200 and 2400 of the summer and of the winter traversal, the queries the rest of the same
   traversal at least 100 frames away) and three synthetic routes; per map, and pooled per size with
   the range of the maps (JSON key ``calibration``: ``rows``, ``pooled``).

6. ``drives`` (with ``--only drives``): the detector on every drive of ``DRIVE_TABLE`` (the Nordland
   drives above, summer at 10 fps, the synthetic route, a small map of 75 places, 60 places seen
   by a 10 and a 30 Hz camera, a second pass slower or faster, at half speed with a stop without
   and with odometry, at twice the speed with odometry) under each setting of
   ``DRIVE_SETTINGS`` (``false_alarm_rate`` x ``temporal_consistency``, the shipped one marked):
   accepted loops, true and false ones, precision, recall and revisited places closed (JSON key
   ``drives``).

``--only`` runs just the named sections (``tables``: 1-3; ``drives``; ``cost``; ``calibration``).

The measurements are in ``boq_vpr.evaluation``: ``drives`` (the drives), ``loops`` (the tables),
``detector_cost`` (``--cost``) and ``false_alarms`` (``--calibration``). Figures are printed and
saved as JSON (``--out``)::

    boq-vpr bench loops --out bench/loops_nordland.json
    OPENBLAS_NUM_THREADS=1 boq-vpr bench loops --only drives --models resnet18_nordland --out bench/loops_drives.json
    OPENBLAS_NUM_THREADS=1 boq-vpr bench loops --only cost --out bench/loops_cost.json
    OPENBLAS_NUM_THREADS=1 boq-vpr bench loops --only calibration --out bench/loops_calibration.json
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from ..evaluation.benchmark import peak_rss_mib
from ..evaluation.detector_cost import COST_QUERIES, COST_SIZES, COST_SLAM_SIZES, COST_SMOOTHNESS, COST_WARMUP
from ..evaluation.drives import DRIVES
from ..evaluation.false_alarms import CALIBRATION_RATES, CALIBRATION_SIZES, CALIBRATION_SOURCES
from ..evaluation.loops import DEFAULT_PARAMS
from ..inputs.nordland import TRIMMED_DIR
from .common import parse_model_spec, write_json

log = logging.getLogger(__name__)

SECTIONS = ('tables', 'drives', 'cost', 'calibration')


def _sections_arg(text: str) -> set[str]:
    names = {t.strip() for t in text.split(',') if t.strip()}
    bad = sorted(names - set(SECTIONS))
    if not names or bad:
        raise argparse.ArgumentTypeError(f'expected a comma-separated list of {", ".join(SECTIONS)}, got {text!r}')
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..models.config import RANDOM_WEIGHTS
    parser.add_argument('--data', type=Path, default=TRIMMED_DIR, help='the Nordland folder (summer/, winter/)')
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
    g.add_argument('--cost-slam-sizes', type=int, nargs='*', default=list(COST_SLAM_SIZES),
                   help='slam session sizes in keyframes (the map is the running session; none: skip)')
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


def sections(args: argparse.Namespace) -> set[str]:
    """Return the sections to run: --only, else the tables plus --cost and --calibration when given."""
    if args.only:
        return set(args.only)
    return {'tables'} | ({'cost'} if args.cost else set()) | ({'calibration'} if args.calibration else set())


def run(args: argparse.Namespace) -> int:
    from ..evaluation.detector_cost import cost_table
    from ..evaluation.false_alarms import calibration_table
    from ..evaluation.loops import cpu_encoder, provenance, run_drives, run_tables
    from ..evaluation.scoring import as_jsonable
    todo = sections(args)
    t_start = time.perf_counter()
    results: dict = {'sections': [s for s in SECTIONS if s in todo], 'provenance': provenance()}
    if 'tables' in todo:
        results.update(run_tables(args.params, [parse_model_spec(s) for s in args.models], args.drives, args.data,
                                  args.every, args.grid))
    if 'drives' in todo:
        results['drives'] = run_drives(args.params, parse_model_spec(args.models[0]), args.data)
    if 'cost' in todo:
        t0 = time.perf_counter()
        results['cost'] = cost_table(args.cost_sizes, args.cost_dim, args.cost_queries, args.cost_warmup,
                                     args.cost_smoothness, slam_sizes=args.cost_slam_sizes)
        results['cost']['seconds'] = time.perf_counter() - t0
    if 'calibration' in todo:
        encoder = None
        if 'nordland' in args.calibration_sources:
            encoder = cpu_encoder(*parse_model_spec(args.models[0]))
        t0 = time.perf_counter()
        results['calibration'] = calibration_table(args.calibration_sizes, args.calibration_rates,
                                                   args.calibration_sources, encoder, args.data)
        results['calibration']['seconds_total'] = time.perf_counter() - t0
    results['provenance']['loadavg_end'] = list(os.getloadavg())
    results['provenance']['peak_rss_mb'] = peak_rss_mib()
    results['wall_s'] = time.perf_counter() - t_start
    write_json(args.out, as_jsonable(results))
    print(f'saved {args.out} ({results["wall_s"]:.0f} s)')
    return 0
