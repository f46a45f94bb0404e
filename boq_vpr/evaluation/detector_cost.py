"""What the loop-closure detector costs (``boq-vpr bench loops --cost``).

The time it adds per query keyframe beside the search it does, and the memory it holds.

On maps of synthetic keyframes (``drives.synthetic_drive``, a flat index, localization mode), each
query keyframe (``revisit_queries``: a stretch of the map seen again) goes through the search alone
(top-k as the detector asks), the detector on single keyframes (``sequence_length 1``) and the
detector with the shipped defaults (sequences on), in turn; ``cost_at_size`` reports per-call
latency (``latency_summary``), what the sequence stage adds (the difference of the two detectors,
and the stage's own time within the calls, ``StageClock``), how many queries each accepted and
the process's resident memory along the way.
"""
from __future__ import annotations

import gc
import math
import os
import time

import numpy as np

from ..errors import ConfigError
from ..values import latency_summary
from .benchmark import current_rss_mib, peak_rss_mib
from .drives import synthetic_drive

# map sizes, timed queries and untimed warm-up queries per map
COST_SIZES = (1000, 10000, 100000)
COST_SLAM_SIZES = (1000, 10000)     # slam sessions (built through the detector, keyframe by keyframe)
COST_QUERIES = 300
COST_WARMUP = 20
COST_RATE_HZ = 2.0
COST_NOISE = 0.3            # norm of the noise added to a revisited map descriptor (before renormalizing)
# the route's smoothness (synthetic_drive): 0.5 makes neighbouring keyframes (0.5 s apart) distinct
# places, so that the revisit is found; at synthetic_drive's default 0.98 a place spans tens of
# keyframes and neither detector accepts the revisit (nothing stands out of its own stretch)
COST_SMOOTHNESS = 0.5
COST_CHUNK = 10000          # keyframes added to the map at a time


def rss_mb() -> float:
    """Return the process's resident memory now, in MiB; the peak where /proc is absent."""
    now = current_rss_mib()
    return now if math.isfinite(now) else peak_rss_mib()


def build_flat_map(descriptors: np.ndarray, stamps_ns: np.ndarray, session: str = 'map',
                   chunk: int = COST_CHUNK):
    """Build an in-memory flat MapDatabase of these keyframes (ids 0..N-1 in order), added in chunks."""
    from ..map import Keyframe, MapDatabase
    db = MapDatabase(descriptors.shape[1], 'bench', 'flat')
    for lo in range(0, len(descriptors), chunk):
        hi = min(lo + chunk, len(descriptors))
        db.add(descriptors[lo:hi], [Keyframe(-1, int(t), session=session) for t in stamps_ns[lo:hi]])
    return db


def revisit_queries(descriptors: np.ndarray, stamps_ns: np.ndarray, count: int, rate_hz: float = COST_RATE_HZ,
                    noise: float = COST_NOISE, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Make ``count`` query keyframes that revisit the middle of the route.

    Returns (descriptors, stamps_ns, true map ids): the map descriptors with Gaussian noise of norm
    ``noise``, renormalized, at ``rate_hz`` after the map's last stamp.
    """
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


class StageClock:
    """The time a detector spends in its sequence stage (``add_query`` and ``decide``), summed per call.

    It wraps the two methods of the detector's stage object, so that the stage's own time is read
    beside the whole call's: the difference of two detectors' latencies mixes in everything else
    that differs between two calls (caches, the machine's load).
    """

    def __init__(self, stage) -> None:
        self.ms = 0.0
        for name in ('add_query', 'decide'):
            setattr(stage, name, self._timed(getattr(stage, name)))

    def _timed(self, method):
        def call(*args, **kwargs):
            t = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.ms += (time.perf_counter() - t) * 1e3
        return call


def cost_configs():
    """(name, config) of the detectors timed: single keyframes, and the shipped defaults (sequences)."""
    from ..detection import DetectorConfig
    return [('single', DetectorConfig(mode='localization', sequence_length=1)),
            ('sequence', DetectorConfig(mode='localization'))]


def _sequence_state(det) -> dict:
    """Measure what the sequence stage holds: its recent queries and the map metadata it read."""
    seq = getattr(det, 'sequence', None)
    if seq is None:
        return {}
    queries = list(seq.queries)
    blocks = list(seq.timeline._blocks.values())
    nbytes = sum(q.descriptor.nbytes + q.seeds.nbytes * 2 + q.seed_scores.nbytes * 2 + q._keys.nbytes +
                 q._values.nbytes for q in queries)
    nbytes += sum(sum(a.nbytes for a in blk) for blk in blocks)
    lines = seq._lines
    nbytes += sum(a.nbytes for a in lines._data.values())
    table = seq.timeline._earlier
    if table is not None:
        # the blocks it covers, the table, and the keyframes it was built from that it does not share
        arrays = [table[2]] + [getattr(table[3], name) for name in ('ids', 'coord', 'segment', 'first', 'key')]
        arrays += [a for a in table[4] if not any(a is b for b in arrays)]
        nbytes += sum(a.nbytes for a in arrays)
    whole = seq.timeline._whole
    for t in (whole[1].values() if whole is not None else ()):
        # every earlier keyframe, read at once
        if t is not None:
            nbytes += sum(getattr(t, name).nbytes for name in ('ids', 'coord', 'segment', 'first', 'key'))
    return {'queries_held': len(queries), 'metadata_blocks': len(blocks), 'lines': lines.size,
            'cache_mb': nbytes / 2 ** 20}


def cost_at_size(n: int, dim: int = 2048, queries: int = COST_QUERIES, warmup: int = COST_WARMUP,
                 rate_hz: float = COST_RATE_HZ, noise: float = COST_NOISE, smoothness: float = COST_SMOOTHNESS,
                 seed: int = 0) -> dict:
    """Time the search and the detector, with and without sequences, on one map of ``n`` keyframes.

    Time the search alone, the detector on single keyframes and with sequences (the defaults), in
    localization mode on one flat map of ``n`` synthetic keyframes, over ``warmup`` + ``queries``
    query keyframes that revisit the middle of the map. The three are called in turn on each query
    (the same conditions for all three); only the last ``queries`` are timed.
    """
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
        ms = {'search': [], **{name: [] for name in detectors}, 'sequence_stage': []}
        clock = StageClock(detectors['sequence'].sequence)
        accepted = {name: 0 for name in detectors}
        correct = {name: 0 for name in detectors}
        outcomes = {name: {} for name in detectors}
        radius = base.calibration_radius
        for i in range(warmup, warmup + queries):
            t = time.perf_counter()
            db.search(q[i][None], k)
            ms['search'].append((time.perf_counter() - t) * 1e3)
            for name, det in detectors.items():
                clock.ms = 0.0
                t = time.perf_counter()
                r = det.process(q[i], int(q_stamps[i]))
                ms[name].append((time.perf_counter() - t) * 1e3)
                if name == 'sequence':
                    ms['sequence_stage'].append(clock.ms)
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
    lat = {name: latency_summary(v) for name, v in ms.items()}
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


def slam_cost_at_size(n: int, dim: int = 2048, queries: int = COST_QUERIES, warmup: int = COST_WARMUP,
                      rate_hz: float = COST_RATE_HZ, noise: float = COST_NOISE, smoothness: float = COST_SMOOTHNESS,
                      seed: int = 0) -> dict:
    """Time the detector in slam mode, where the map is the running session of ``n`` keyframes.

    The session's keyframes go through the detector (every frame a keyframe, no threshold: the search
    and the add), then, with mapping off, ``warmup`` + ``queries`` query keyframes revisit the middle
    of the route, through the detector on single keyframes and then with sequences (the defaults),
    one run after the other (one detector holds the session); only the last ``queries`` of each run
    are timed.
    """
    import dataclasses

    from ..detection import DetectorConfig, LoopClosureDetector
    from ..map import MapDatabase
    t0 = time.perf_counter()
    frames = synthetic_drive(dim, n=n, rate_hz=rate_hz, smoothness=smoothness, seed=seed)
    q, q_stamps, truth = revisit_queries(frames.descriptors, frames.stamps_ns, warmup + queries, rate_hz, noise)
    db = MapDatabase(dim, 'bench', 'flat')
    every_frame = {'mode': 'slam', 'keyframe_max_similarity': 1.0, 'keyframe_min_time_s': 0.0}
    det = LoopClosureDetector(db, DetectorConfig(sequence_length=1, false_alarm_rate=0.0, **every_frame))
    try:
        for d, t in zip(frames.descriptors, frames.stamps_ns):
            det.process(d, int(t))
        build_s = time.perf_counter() - t0
        det.mapping = False
        ms, accepted, correct = {}, {}, {}
        radius = DetectorConfig().calibration_radius
        for run, (name, cfg) in enumerate(cost_configs()):
            det.configure(dataclasses.replace(cfg, **every_frame))
            offset = run * (int(q_stamps[-1]) - int(frames.stamps_ns[-1]) + 10 ** 12)   # stamps go on
            ms[name], accepted[name], correct[name] = [], 0, 0
            clock = StageClock(det.sequence) if name == 'sequence' else None
            if clock is not None:
                ms['sequence_stage'] = []
            for i in range(warmup + queries):
                if clock is not None:
                    clock.ms = 0.0
                t = time.perf_counter()
                r = det.process(q[i], int(q_stamps[i]) + offset)
                if i >= warmup:
                    ms[name].append((time.perf_counter() - t) * 1e3)
                    if clock is not None:
                        ms['sequence_stage'].append(clock.ms)
                    accepted[name] += int(bool(r.candidates))
                    correct[name] += int(bool(r.candidates) and abs(r.candidates[0].match_id - int(truth[i])) <= radius)
        session = det.session_keyframes
    finally:
        db.close()
    lat = {name: latency_summary(v) for name, v in ms.items()}
    return {'keyframes': n, 'session_keyframes': session, 'dim': dim, 'queries': queries, 'warmup': warmup,
            'latency_ms': lat, 'added_by_sequence_ms': {'p50': lat['sequence']['p50'] - lat['single']['p50'],
                                                        'p90': lat['sequence']['p90'] - lat['single']['p90']},
            'accepted': accepted, 'accepted_correct': correct, 'build_s': build_s,
            'seconds': time.perf_counter() - t0, 'loadavg_after': list(os.getloadavg())}


def format_slam_cost_row(r: dict) -> str:
    lat, add, q = r['latency_ms'], r['added_by_sequence_ms'], r['queries']
    return (f'cost  slam session {r["session_keyframes"]:>6} keyframes  single p50 {lat["single"]["p50"]:7.2f} '
            f'p90 {lat["single"]["p90"]:7.2f}  sequence p50 {lat["sequence"]["p50"]:7.2f} '
            f'p90 {lat["sequence"]["p90"]:7.2f}  added by sequences p50 {add["p50"]:+6.2f} p90 {add["p90"]:+6.2f} ms'
            f' (the stage itself p50 {lat["sequence_stage"]["p50"]:.2f} p90 {lat["sequence_stage"]["p90"]:.2f})'
            f'  accepted single {r["accepted"]["single"]}/{q} sequence {r["accepted"]["sequence"]}/{q}'
            f' (correct {r["accepted_correct"]["single"]}, {r["accepted_correct"]["sequence"]})')


def format_cost_row(r: dict) -> str:
    lat, add, rss = r['latency_ms'], r['added_by_sequence_ms'], r['rss_mb']
    q = r['queries']
    return (f'cost  keyframes {r["keyframes"]:>6}  search p50 {lat["search"]["p50"]:7.2f} '
            f'p90 {lat["search"]["p90"]:7.2f} ms'
            f'  single p50 {lat["single"]["p50"]:7.2f} p90 {lat["single"]["p90"]:7.2f}'
            f'  sequence p50 {lat["sequence"]["p50"]:7.2f} p90 {lat["sequence"]["p90"]:7.2f}'
            f'  added by sequences p50 {add["p50"]:+6.2f} p90 {add["p90"]:+6.2f} ms (x{add["ratio_p50"]:.2f} p50,'
            f' x{add["ratio_p90"]:.2f} p90; the stage itself p50 {lat["sequence_stage"]["p50"]:.2f}'
            f' p90 {lat["sequence_stage"]["p90"]:.2f})'
            f'  accepted single {r["accepted"]["single"]}/{q} sequence {r["accepted"]["sequence"]}/{q}'
            f' (correct {r["accepted_correct"]["single"]}, {r["accepted_correct"]["sequence"]})'
            f'  RSS MiB map {rss["map_built"]:.0f} -> single {rss["after_single_warmup"]:.0f}'
            f' -> sequence {rss["after_sequence_warmup"]:.0f} -> end {rss["end"]:.0f}'
            f' (sequence cache {r["sequence_state"].get("cache_mb", math.nan):.1f} MiB)')


def cost_table(sizes, dim: int = 2048, queries: int = COST_QUERIES, warmup: int = COST_WARMUP,
               smoothness: float = COST_SMOOTHNESS, printer=print, slam_sizes=()) -> dict:
    """``cost_at_size`` per map size, then ``slam_cost_at_size`` per slam session size, one printed line each."""
    from ..detection import DetectorConfig
    if min([*sizes, *slam_sizes]) < 1 or dim < 2 or queries < 1 or warmup < 0 or not 0 <= smoothness < 1:
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
    out['slam_rows'] = []
    for n in slam_sizes:
        row = slam_cost_at_size(int(n), dim, queries, warmup, smoothness=smoothness)
        out['slam_rows'].append(row)
        printer(format_slam_cost_row(row), flush=True)
    return out
