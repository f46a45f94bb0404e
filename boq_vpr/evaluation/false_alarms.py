"""Whether the calibrated threshold holds (``boq-vpr bench loops --calibration``).

The measured false-alarm rate per query against the requested one.

Localization mode, ``false_alarm_rate`` 0.01 and 0.001, ``temporal_consistency 1``, otherwise
``DetectorConfig()`` defaults, on maps of given sizes with queries that have no true match in the
map: Nordland summer frames (the queries a part of the route at least
``CALIBRATION_NORDLAND_MARGIN`` frames past the map) and synthetic routes. Every accepted query is a
false alarm; rows give the rate with its 95% interval.
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
    """Measure the rows of the synthetic source.

    The map is a route of ``synthetic_drive(seed=0)`` at 2 Hz, the queries another route
    (``seed=1``) after it.
    """
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
    """Plan the nordland rows: (size, query frames or None, note) per map size.

    The map is summer frames [0:N], the queries summer frames from ``CALIBRATION_NORDLAND_MARGIN``
    frames past its end (the summer traversal revisits nothing; winter would revisit the map, so it
    is never used).
    """
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
    """Measure the rows of the nordland source.

    Returns the rows (``encoder``'s descriptors of the summer traversal, 1 s per frame; the queries
    60 s after the map), and the notes of the sizes without a row.
    """
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
