"""``boq-vpr evaluate``: score loop closures on bags against ground truth.

Single session (slam mode, loops against the bag's own past)::

    boq-vpr evaluate BAG --out DIR [--params config/vpr.yaml] [--gt auto|frames|csv:F|topic:/T]

Map vs queries (localization mode)::

    boq-vpr evaluate QUERY_BAG --map-bag MAP_BAG --out DIR
    boq-vpr evaluate QUERY_BAG --map MAP_DIR --out DIR

Writes ``metrics.json``, ``summary.md``, ``candidates.csv`` and the PNG plots into ``--out``.
``--save-descriptors``/``--descriptors`` keep the encoding for later runs (threshold sweeps);
``--live REC_BAG`` scores a recording of the running node's outputs (``boq-vpr replay --record``)
against the same ground truth and compares it with the offline result.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from .. import evaluation as ev
from ..errors import BagError, ConfigError
from ..evaluation import metrics as mt
from ..evaluation.report import fmt, summary_markdown, write_candidates, write_plots
from ..inputs.ground_truth import CRITERIA, Criterion, from_poses
from .common import add_encoder_args, encoder_from_args, parse_index_options, write_json

log = logging.getLogger(__name__)


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}') from None


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated numbers, got {text!r}') from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..inputs.bags import STAMP_SOURCES
    parser.add_argument('bag', type=Path, nargs='?', default=None,
                        help='the bag to evaluate (single session) or the query bag (with --map-bag/--map); '
                             'optional with --descriptors')
    parser.add_argument('--out', type=Path, required=True, help='output folder')
    m = parser.add_argument_group('mode')
    m.add_argument('--map-bag', type=Path, default=None, help='build the map from this bag (map vs queries)')
    m.add_argument('--map', type=Path, default=None, help='load this saved map directory (map vs queries)')
    d = parser.add_argument_group('input')
    d.add_argument('--topic', default=None, help='image topic (default: the only image topic of the bag)')
    d.add_argument('--map-topic', default=None, help='image topic of --map-bag (default: --topic, else the only one)')
    d.add_argument('--stamp', default='header', choices=STAMP_SOURCES,
                   help='frame time: header stamp (default) or bag receive time')
    d.add_argument('--every', type=int, default=1, help='use one frame in N (default: 1)')
    d.add_argument('--max-frames', type=int, default=None, help='use at most this many frames per bag')
    d.add_argument('--odom-topic', default=None,
                   help='odometry/pose topic whose positions are given to the detector (keyframe distance; '
                        'sequences aligned by travelled distance)')
    d.add_argument('--save-descriptors', type=Path, default=None,
                   help='save descriptors (+ stamps, ground truth) into this folder for later runs')
    d.add_argument('--descriptors', type=Path, default=None,
                   help='reuse descriptors saved with --save-descriptors (no encoding)')
    g = parser.add_argument_group('ground truth')
    g.add_argument('--gt', default=None,
                   help=f'ground truth of the (query) bag: {ev.GT_FORMS} (default: auto, the make-bag CSV)')
    g.add_argument('--map-gt', default=None, help='ground truth of --map-bag / --map (same forms; default: auto)')
    g.add_argument('--distance', type=float, default=25.0, help='true match within this distance in m (default 25)')
    g.add_argument('--frame-tolerance', type=int, default=2,
                   help='true match within this many frames, for frame-index ground truth (default 2)')
    g.add_argument('--gt-by', default='auto', choices=CRITERIA,
                   help='compare positions or frame indices (default auto: positions when both sides have them)')
    g.add_argument('--gt-max-dt', type=float, default=0.5,
                   help='largest time gap (s) bridged when matching poses to image stamps (default 0.5)')
    p = parser.add_argument_group('detector')
    p.add_argument('--params', type=Path, default=None,
                   help='node parameters file (config/vpr.yaml): loop_closure.* build the detector configuration')
    p.add_argument('--node-name', default=None, help='section of the parameters file (default: /** and all)')
    p.add_argument('--encoder-from-params', action='store_true',
                   help='take the model and encoder settings (model.*, encoder.backend/device/precision) from '
                        '--params too, as the node does, instead of --model/--weights/...')
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                   help='override a detector parameter (e.g. min_score=0.6), repeatable')
    p.add_argument('--index-type', default=None,
                   help='index of maps built here (default: map.index_type of --params, as the node uses, else flat)')
    p.add_argument('--index-option', action='append', default=[], metavar='KEY=VALUE',
                   help='index option of maps built here, repeatable (default: map.index_options.* of --params)')
    r = parser.add_argument_group('report')
    r.add_argument('--ks', type=_ints, default=list(mt.DEFAULT_KS), help='k of recall@k (default 1,5,10,20)')
    r.add_argument('--sweep', action='store_true', help='sweep thresholds and recommend detector settings')
    r.add_argument('--target-precision', type=float, default=0.95, help='precision the sweep aims for (default 0.95)')
    r.add_argument('--sweep-thresholds', type=_floats, default=None,
                   help='thresholds to try (default: 15 quantiles of the decision scores)')
    r.add_argument('--sweep-consistency', type=_ints, default=[1, 2, 3],
                   help='temporal_consistency values to try (default 1,2,3)')
    r.add_argument('--no-plots', action='store_true', help='skip the PNG plots')
    r.add_argument('--title', default=None, help='title of the plots and summary')
    lv = parser.add_argument_group('live run')
    lv.add_argument('--live', type=Path, default=None,
                    help='bag recorded from the running node (boq-vpr replay --record): score and compare it')
    lv.add_argument('--live-topic', default=None,
                    help='candidates topic in --live (default: the one named */candidates)')
    add_encoder_args(parser)


class _LazyEncoder:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.encoder = None

    def get(self):
        if self.encoder is None:
            self.encoder = encoder_from_args(self.args)
        return self.encoder


def _frames(args, lazy: _LazyEncoder, bag: Path | None, topic: str | None, gt_spec: str | None, name: str,
            keep_images: bool) -> ev.Frames:
    cached = args.descriptors / f'{name}.npz' if args.descriptors else None
    if cached is not None:
        if not cached.is_file():
            raise BagError(f'{cached}: no saved descriptors for the {name} (saved ones: '
                           f'{", ".join(p.name for p in sorted(args.descriptors.glob("*.npz"))) or "none"})')
        frames = ev.Frames.load(cached)
        log.info('%s: %d descriptors from %s (%s)', name, len(frames), cached, frames.source)
        if keep_images:
            if bag is None:
                raise ConfigError('geometric verification needs the images: give the bag along with --descriptors')
            ev.load_images(frames, bag, args.stamp)
        if gt_spec is not None or len(frames.gt) != len(frames):
            frames.gt = ev.ground_truth_for(bag or Path(frames.source), frames.stamps_ns, gt_spec, args.gt_max_dt)
    else:
        if bag is None:
            raise ConfigError(f'give the {name} bag (or --descriptors)')
        frames = ev.read_frames(bag, lazy.get(), topic, stamp=args.stamp, every=args.every,
                                max_frames=args.max_frames, keep_images=keep_images)
        frames.gt = ev.ground_truth_for(bag, frames.stamps_ns, gt_spec, args.gt_max_dt)
    if args.odom_topic:
        from ..inputs.bags import read_poses
        src = bag or Path(frames.source)
        frames.odom = from_poses(read_poses(src, args.odom_topic), frames.stamps_ns, args.gt_max_dt,
                                 source=f'{src}:{args.odom_topic}').positions
    if frames.report.get('out_of_order_stamps'):
        log.warning('%s: %d stamps out of order in the bag; frames were evaluated in stamp order',
                    frames.source, frames.report['out_of_order_stamps'])
    if args.save_descriptors is not None:
        path = frames.save(args.save_descriptors / f'{name}.npz')
        log.info('saved %d descriptors to %s', len(frames), path)
    return frames


def _encoder_from_params(args: argparse.Namespace, params: dict) -> None:
    """Model and encoder arguments from node parameters (those present in the file)."""
    args.model = params.get('model.name', args.model)
    if 'model.weights' in params:
        args.weights = Path(params['model.weights']) if params['model.weights'] else None
    h, w = int(params.get('model.image_height', 0) or 0), int(params.get('model.image_width', 0) or 0)
    if h > 0 and w > 0:
        args.image_size = (h, w)
    elif h or w:
        raise ConfigError('model.image_height and model.image_width must both be set (or both 0)')
    args.resize_mode = params.get('model.resize_mode', args.resize_mode)
    args.backend = params.get('encoder.backend', args.backend)
    args.device = params.get('encoder.device', args.device)
    args.precision = params.get('encoder.precision', args.precision)
    # the node's model file and INT8 calibration too, so that offline and live runs encode alike
    options = {}
    if params.get('encoder.onnx_path'):
        options['onnx_path'] = params['encoder.onnx_path']
    if params.get('encoder.calibration'):
        options['calibration'] = params['encoder.calibration']
    args.backend_options = options
    if params.get('encoder.cache_dir'):
        from ..backends.engine_cache import CACHE_ENV
        os.environ[CACHE_ENV] = str(Path(params['encoder.cache_dir']).expanduser())


def run(args: argparse.Namespace) -> int:
    if args.map_bag is not None and args.map is not None:
        raise ConfigError('--map-bag and --map exclude each other (build the map from a bag, or load a saved one)')
    if args.bag is None and args.descriptors is None:
        raise ConfigError('give a bag (or --descriptors)')
    if args.every < 1 or (args.max_frames is not None and args.max_frames < 1):
        raise ConfigError('--every and --max-frames must be >= 1')
    ks = sorted(set(args.ks))
    if not ks or ks[0] < 1:
        raise ConfigError('--ks needs positive integers')
    mode = 'localization' if (args.map_bag is not None or args.map is not None or
                              (args.descriptors is not None and (args.descriptors / 'map.npz').is_file()
                               and not (args.descriptors / 'session.npz').is_file())) else 'slam'
    params = ev.load_params(args.params, args.node_name) if args.params else {}
    if args.encoder_from_params:
        if not args.params:
            raise ConfigError('--encoder-from-params needs --params')
        _encoder_from_params(args, params)
    elif params.get('model.name') and params['model.name'] != args.model:
        log.warning('the parameters file names model %s, this evaluation uses %s (--model)', params['model.name'],
                    args.model)
    config = ev.detector_config(params, ev.parse_overrides(args.set), mode)
    # the index the node would build: map.index_type / map.index_options.* of the parameters file
    from ..ros.parameters import map_index_options
    index_type = args.index_type or params.get('map.index_type') or 'flat'
    index_options = (parse_index_options(args.index_option) if args.index_option or args.index_type
                     else map_index_options(params, index_type))
    for text in config.warnings():
        log.warning('detector: %s', text)
    criterion = Criterion(args.distance, args.frame_tolerance, args.gt_by)
    lazy = _LazyEncoder(args)
    keep_images = config.geometric_verification
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    title = args.title or (args.bag.name if args.bag else args.descriptors.name)

    if mode == 'slam':
        queries = _frames(args, lazy, args.bag, args.topic, args.gt, 'session', keep_images)
        map_frames = queries
        run_fn = lambda cfg, retrieval=True, progress=True: ev.run_slam(  # noqa: E731
            queries, cfg, k=max(ks), retrieval=retrieval, index_type=index_type, index_options=index_options,
            progress=progress)
        map_desc = f'{queries.source} (its own past)'
    else:
        queries = _frames(args, lazy, args.bag, args.topic, args.gt, 'query', keep_images)
        if args.map is not None:
            from ..map import MapDatabase
            db = MapDatabase.load(args.map, fingerprint=queries.fingerprint,
                                  descriptor_dim=queries.descriptors.shape[1])
            map_frames = ev.map_frames_from_db(db, args.map_gt, args.gt_max_dt)
            map_ids = map_frames.indices
            map_desc = str(args.map)
        else:
            map_frames = _frames(args, lazy, args.map_bag, args.map_topic or args.topic, args.map_gt, 'map',
                                 keep_images)
            db = ev.build_map(map_frames, index_type, thumbnails=keep_images, **index_options)
            map_ids = db.ids()
            map_desc = map_frames.source
        run_fn = lambda cfg, retrieval=True, progress=True: ev.run_localization(  # noqa: E731
            queries, db, cfg, map_ids, k=max(ks), retrieval=retrieval, progress=progress)

    result = run_fn(config)
    scored = ev.score_run(result, queries, map_frames, criterion, ks)
    metrics = {'mode': mode, **{k: v for k, v in scored.metrics.items() if k != 'mode'}}
    encoder_info = queries.encoder or {}
    metrics['setup'] = {'query': f'{queries.source}:{queries.topic}', 'map': map_desc if mode != 'slam' else None,
                        'model': encoder_info.get('model'), 'fingerprint': queries.fingerprint,
                        'random_weights': encoder_info.get('weights', 'x') is None,
                        'encoder': encoder_info, 'detector': config.to_dict(),
                        'params_file': str(args.params) if args.params else None,
                        'index': ({'type': db.index_type, 'source': 'loaded map'} if args.map is not None else
                                  {'type': index_type, 'options': index_options,
                                   'source': 'command line' if args.index_type else
                                   ('parameters file' if 'map.index_type' in params else 'default')})}
    metrics['outcomes'] = result.outcome_counts
    metrics['ground_truth_frame_tolerance'] = args.frame_tolerance
    metrics['input'] = {'query' if mode != 'slam' else 'session': queries.report}
    if mode != 'slam' and map_frames.report:
        metrics['input']['map'] = map_frames.report
    metrics['latency'] = ev.latency(queries, result, map_frames)
    if args.sweep:
        metrics['sweep'] = ev.sweep(lambda cfg: run_fn(cfg, retrieval=False, progress=False), config, queries,
                                    map_frames, criterion, args.target_precision, args.sweep_thresholds,
                                    args.sweep_consistency, decisions=result.decision)
    if args.live is not None:
        live = ev.read_live(args.live, args.live_topic)
        live_run, matched = ev.live_as_run(live, result, queries, map_frames)
        live_scored = ev.score_run(live_run, queries, map_frames, criterion, ks)
        metrics['live'] = {'source': str(args.live), 'topic': live.topic, 'messages': live.messages,
                           'matching': matched, 'node': live.diagnostics,
                           'operating_point': live_scored.metrics.get('operating_point'),
                           'comparison': ev.compare_live(result, live_run, queries)}
    figures = [] if args.no_plots else write_plots(out, title, scored, result, queries, map_frames, metrics)
    metrics['figures'] = [Path(f).name for f in figures]
    metrics = ev.as_jsonable(metrics)
    write_json(out / 'metrics.json', metrics)
    write_candidates(out / 'candidates.csv', result, queries)
    (out / 'summary.md').write_text(summary_markdown(metrics, f'Loop-closure evaluation: {title}', figures))
    c = metrics['counts']
    print(f'evaluated {c["queries"]} queries ({mode}) -> {out / "metrics.json"}')
    if 'recall_at_k' in metrics:
        print('  recall@k: ' + ', '.join(f'R@{k} {fmt(v)}' for k, v in metrics['recall_at_k'].items()))
    if 'precision_recall' in metrics:
        pr, op = metrics['precision_recall'], metrics['operating_point']
        print(f'  AUC-PR {fmt(pr["auc_pr"])}, max recall @100% precision {fmt(pr["max_recall_at_100_precision"])}, '
              f'F1 max {fmt(pr["f1_max"]["f1"])}; configured detector: precision {fmt(op["precision"])}, '
              f'recall {fmt(op["recall"])}')
    if metrics.get('sweep', {}).get('recommended'):
        print('  recommended: ' + json.dumps(metrics['sweep']['recommended']))
    if 'live' in metrics:
        cmp_ = metrics['live']['comparison']
        print(f'  live vs offline: {cmp_["same"]} same, {cmp_["different_match"]} different, '
              f'{cmp_["offline_only"]} offline only, {cmp_["live_only"]} live only')
    return 0
