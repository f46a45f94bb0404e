"""Whether the calibrated threshold holds (``boq-vpr bench loops --calibration``).

The measured false-alarm rate per query against the requested one.

Localization mode, ``false_alarm_rate`` 0.01 and 0.001, ``temporal_consistency 1``, otherwise
``DetectorConfig()`` defaults, on maps of given sizes with queries that have no true match in the
map: Nordland frames (maps at several places of the summer and of the winter traversal, the queries
the rest of the same traversal at least ``CALIBRATION_NORDLAND_MARGIN`` frames away) and synthetic
routes (several maps). Every accepted query is a false alarm; rows give the rate with its 95% interval,
per map and pooled over the maps of one size (``pooled``): maps of one size differ a lot.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..inputs.nordland import NORDLAND_FRAMES, load_frames
from .detector_cost import build_flat_map
from .drives import GAP_S, synthetic_drive

CALIBRATION_SIZES = (50, 200, 1000, 10000)
CALIBRATION_RATES = (0.01, 0.001)
CALIBRATION_SOURCES = ('nordland', 'synthetic')
CALIBRATION_NORDLAND_QUERIES = 1500     # at most
CALIBRATION_NORDLAND_MARGIN = 100       # frames between the map and the first query
CALIBRATION_NORDLAND_MIN_QUERIES = 200  # fewer available queries: no row
CALIBRATION_NORDLAND_STARTS = (0, 1200, 2400)   # first frame of each map of a size
CALIBRATION_NORDLAND_SEASONS = ('summer', 'winter')
CALIBRATION_SYNTHETIC_SEEDS = (0, 2, 3)         # one map per seed and size
CALIBRATION_SYNTHETIC_QUERIES = 2000
CALIBRATION_SYNTHETIC_DIM = 256


def calibration_config(rate: float):
    """Make the detector configuration of the calibration rows at ``rate``.

    Localization mode, ``false_alarm_rate`` = ``rate``, every query decides alone
    (``temporal_consistency 1``), otherwise ``DetectorConfig()``'s defaults.
    """
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
    """Count the false alarms of a fresh detector at ``rate`` over ``queries``.

    Every query goes through a fresh detector at ``rate``; none has a true match in ``db``, so every
    accepted query is a false alarm.
    """
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
    return (f'calibration  {r["source"]:<9} {r.get("season", ""):<6} keyframes {r["keyframes"]:>5}  queries '
            f'{r["queries"]:>4}  requested {r["requested_rate"]:<6g} accepted {r["accepted"]:>4}  measured '
            f'{r["measured_rate"]:.4f} [95% {lo:.4f}-{hi:.4f}]  measured/requested {r["ratio"]:5.2f}  episodes '
            f'{r["episodes"]:>3}  map {r.get("map", "")}  outcomes: {outcomes}')


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
                          dim: int = CALIBRATION_SYNTHETIC_DIM, seeds=CALIBRATION_SYNTHETIC_SEEDS,
                          printer=print) -> list[dict]:
    """Measure the rows of the synthetic source.

    A map per size and seed: a route of ``synthetic_drive(seed=s)`` at 2 Hz; the queries another route
    (``seed=1``) after it.
    """
    route = synthetic_drive(dim, n=queries, rate_hz=2.0, seed=1)
    rows = []
    for n in sizes:
        for seed in seeds:
            m = synthetic_drive(dim, n=int(n), rate_hz=2.0, seed=int(seed))
            stamps = int(m.stamps_ns[-1]) + int(GAP_S * 1e9) + route.stamps_ns
            rows += _map_and_rows('synthetic', m.descriptors, m.stamps_ns, route.descriptors, stamps, rates, printer,
                                  {'map': f'synthetic_drive({dim}, n={n}, rate_hz=2, seed={seed})',
                                   'query_route': f'synthetic_drive({dim}, n={queries}, rate_hz=2, seed=1)'})
    return rows


def nordland_calibration_plan(sizes, starts=CALIBRATION_NORDLAND_STARTS,
                              max_queries: int = CALIBRATION_NORDLAND_QUERIES,
                              frames: int = NORDLAND_FRAMES) -> list[dict]:
    """Plan the maps of the nordland rows: one per size and first frame.

    Each: ``keyframes``, ``start`` (the map is frames [start, start + keyframes) of one traversal),
    ``queries`` (frame numbers, None when there is no row, with ``note`` saying why) and ``restart``
    (where they jump back to the start of the traversal). The queries are the frames at least
    ``CALIBRATION_NORDLAND_MARGIN`` frames past the map, then those as far before it: a traversal never
    revisits a place of itself, so none has a true match in the map.
    """
    plan = []
    for n in sizes:
        for start in starts:
            n, start = int(n), int(start)
            entry = {'keyframes': n, 'start': start, 'queries': None, 'restart': 0, 'note': ''}
            plan.append(entry)
            if start + n > frames:
                entry['note'] = f'no row: a map of {n} frames from frame {start} runs past the {frames} frames'
                continue
            after = np.arange(start + n + CALIBRATION_NORDLAND_MARGIN, frames)
            before = np.arange(0, max(start - CALIBRATION_NORDLAND_MARGIN, 0))
            queries = np.concatenate([after, before])[:max_queries]
            if queries.size < CALIBRATION_NORDLAND_MIN_QUERIES:
                entry['note'] = (f'no row: fewer than {CALIBRATION_NORDLAND_MIN_QUERIES} frames remain '
                                 f'{CALIBRATION_NORDLAND_MARGIN} frames away from a map of {n} from frame {start}')
                continue
            entry.update(queries=queries, restart=min(after.size, queries.size))
    return plan


def calibration_nordland(encoder, data: Path, sizes, rates=CALIBRATION_RATES,
                         seasons=CALIBRATION_NORDLAND_SEASONS, printer=print) -> tuple[list, list]:
    """Measure the rows of the nordland source: each map of the plan, in each season's traversal.

    Returns the rows (``encoder``'s descriptors, 1 s per frame, the queries 60 s after the map and
    another 60 s later where they jump back to the start of the traversal, so that no sequence runs
    across the jump), and the notes of the maps without a row.
    """
    plan = nordland_calibration_plan(sizes)
    notes = [{'keyframes': e['keyframes'], 'start': e['start'], 'note': e['note']}
             for e in plan if e['queries'] is None]
    for note in notes:
        printer(f'calibration  nordland  keyframes {note["keyframes"]:>5}  from frame {note["start"]}  '
                f'{note["note"]}', flush=True)
    runs = [e for e in plan if e['queries'] is not None]
    if not runs:
        return [], notes
    rows = []
    for season in seasons:
        desc = encoder.encode(load_frames(data / season, range(0, NORDLAND_FRAMES)))
        rows += nordland_rows(desc, runs, rates, printer, {'season': season, 'model': encoder.fingerprint})
    return rows, notes


def nordland_rows(desc: np.ndarray, runs: list[dict], rates, printer=print, extra: dict | None = None) -> list[dict]:
    """Measure the rows of the maps ``runs`` (of ``nordland_calibration_plan``) on one traversal's descriptors."""
    desc = np.ascontiguousarray(desc, np.float32)
    rows = []
    for e in runs:
        n, start, q = e['keyframes'], e['start'], e['queries']
        map_stamps = np.arange(n, dtype=np.int64) * 1_000_000_000
        q_stamps = (map_stamps[-1] + int(GAP_S * 1e9) + np.arange(q.size, dtype=np.int64) * 1_000_000_000
                    + (np.arange(q.size) >= e['restart']) * int(GAP_S * 1e9))
        rows += _map_and_rows('nordland', desc[start:start + n], map_stamps, desc[q], q_stamps, rates, printer,
                              {'map': f'frames {start}:{start + n}', 'query_frames': _spans(q), **(extra or {})})
    return rows


def _spans(frames: np.ndarray) -> str:
    """Write increasing frame numbers as their runs, e.g. '150:1650' or '3150:3576, 0:1024'."""
    cut = np.flatnonzero(np.diff(frames) != 1) + 1
    return ', '.join(f'{int(p[0])}:{int(p[-1]) + 1}' for p in np.split(frames, cut))


def pooled(rows: list[dict]) -> list[dict]:
    """Pool the rows of the maps of one source, season, size and rate: their false alarms over their queries.

    With the range of the maps' own ratios (measured / requested): maps of one size differ a lot.
    """
    groups: dict = {}
    for r in rows:
        groups.setdefault((r['source'], r.get('season', ''), r['keyframes'], r['requested_rate']), []).append(r)
    out = []
    for (source, season, n, rate), rs in groups.items():
        k, q = sum(r['accepted'] for r in rs), sum(r['queries'] for r in rs)
        ratios = [r['ratio'] for r in rs]
        out.append({'source': source, 'season': season, 'keyframes': n, 'requested_rate': rate, 'maps': len(rs),
                    'accepted': k, 'queries': q, 'measured_rate': k / q, 'ratio': k / q / rate,
                    'measured_rate_ci95': list(binomial_interval(k, q)),
                    'map_ratio_min': min(ratios), 'map_ratio_max': max(ratios)})
    return out


def format_pooled_row(r: dict) -> str:
    lo, hi = r['measured_rate_ci95']
    return (f'pooled  {r["source"]:<9} {r["season"]:<6} keyframes {r["keyframes"]:>5}  maps {r["maps"]}  requested '
            f'{r["requested_rate"]:<6g} accepted {r["accepted"]:>4} of {r["queries"]:>5}  measured '
            f'{r["measured_rate"]:.4f} [95% {lo:.4f}-{hi:.4f}]  measured/requested {r["ratio"]:5.2f}  '
            f'(maps {r["map_ratio_min"]:.2f}-{r["map_ratio_max"]:.2f})')


def calibration_table(sizes, rates=CALIBRATION_RATES, sources=CALIBRATION_SOURCES, encoder=None,
                      data: Path | None = None, synthetic_queries: int = CALIBRATION_SYNTHETIC_QUERIES,
                      printer=print) -> dict:
    """Measure the calibration rows of each source (nordland needs ``encoder`` and ``data``)."""
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
            rows, notes = calibration_nordland(encoder, data, sizes, rates, printer=printer)
            out['settings']['nordland'] = {'model': encoder.fingerprint, 'seconds_per_frame': 1.0,
                                           'max_queries': CALIBRATION_NORDLAND_QUERIES,
                                           'margin_frames': CALIBRATION_NORDLAND_MARGIN,
                                           'map_starts': list(CALIBRATION_NORDLAND_STARTS),
                                           'seasons': list(CALIBRATION_NORDLAND_SEASONS)}
            out['notes'] += [{'source': 'nordland', **n} for n in notes]
        elif source == 'synthetic':
            rows = calibration_synthetic(sizes, rates, synthetic_queries, printer=printer)
            out['settings']['synthetic'] = {'dim': CALIBRATION_SYNTHETIC_DIM, 'queries': synthetic_queries,
                                            'rate_hz': 2.0, 'map_seeds': list(CALIBRATION_SYNTHETIC_SEEDS)}
        else:
            raise ConfigError(f'unknown calibration source {source!r}')
        out['rows'] += rows
        out.setdefault('seconds', {})[source] = time.perf_counter() - t0
    out['pooled'] = pooled(out['rows'])
    for r in out['pooled']:
        printer(format_pooled_row(r), flush=True)
    return out
