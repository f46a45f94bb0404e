"""The tables of ``boq-vpr bench loops``.

What the loop-closure filters and thresholds do on drives whose truth is known (``drives``),
measured with the same detector library as the node.

- ``threshold_configs``: threshold kinds side by side (fixed ``min_score``, ``relative_score``, the
  calibrated ``false_alarm_rate``), one query per frame and no consistency, so that the rate of
  accepted loops on the drives without revisits is the false-alarm rate per query;
- ``filter_configs``: the shipped configuration and what each of its filters adds, starting from
  no filter at all;
- ``grid_configs``: the grid the shipped defaults were chosen from (``GRID``);
- ``run_drives``: the detector on every drive of ``DRIVE_TABLE`` under each setting of
  ``DRIVE_SETTINGS``.

The time and memory the detector costs are in ``detector_cost``, the measured false-alarm rates in
``false_alarms``; ``provenance`` says what was measured.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path
from typing import Sequence

from .drives import DRIVE_SETTINGS, DRIVE_TABLE, nordland_drive, run_setting, synthetic_drive, table_drive

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PARAMS = ROOT / 'config' / 'vpr.yaml'

# threshold kinds compared (temporal consistency 1, every frame a keyframe)
THRESHOLDS = (
    [('min_score', v) for v in (0.5, 0.7, 0.9)] +
    [('relative_score', v) for v in (0.8, 0.9)] +
    [('false_alarm_rate', v) for v in (0.01, 0.001)])


def cpu_encoder(name: str, weights: str | None):
    """Make the encoder of the drives: eager PyTorch FP32 on the CPU, batches of 64."""
    from ..encoder import Encoder
    return Encoder(name, weights=weights, backend='torch', device='cpu', precision='fp32', batch_size=64)


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


def run_tables(params: Path, models: Sequence[tuple[str, str | None]], drives: Sequence[str], data: Path,
               every: int = 1, grid: bool = False, printer=print) -> dict:
    """Run the tables of threshold kinds, filters and (``grid``) the grid over ``models`` and ``drives``.

    ``models``: (configuration, weights or None) each; the grid runs on the first one, and so does
    the synthetic drive (its descriptors do not depend on the model). ``params``: the node's
    parameters file whose ``loop_closure.*`` are the shipped defaults.
    """
    from .params import detector_config, load_params
    base = detector_config(load_params(params), {}, 'slam')
    results: dict = {'params': str(params), 'detector': base.to_dict(), 'every': every, 'runs': []}
    t_start = time.perf_counter()
    for model in models:
        name, weights = model
        enc = cpu_encoder(name, weights)
        label = f'{name} ({"random weights" if enc.weights is None else "shipped" if weights is None else weights})'
        frames_of = {}
        for drive in drives:
            frames_of[drive] = (synthetic_drive(enc.descriptor_dim) if drive == 'synthetic'
                                else nordland_drive(drive, enc, data, every))
        tables = [('thresholds', threshold_configs(base)), ('filters', filter_configs(base))]
        if grid and model == models[0]:
            tables.append(('grid', list(grid_configs(base))))
        for table, configs in tables:
            for setting, cfg in configs:
                for drive, frames in frames_of.items():
                    if drive == 'synthetic' and model != models[0]:
                        continue   # synthetic descriptors do not depend on the model
                    row = {'table': table, 'model': label, 'drive': drive, 'setting': setting,
                           **run_setting(frames, cfg)}
                    results['runs'].append(row)
                    printer(f'{table:<10} {label:<36} {drive:<10} {setting:<72} keyframes {row["keyframes"]:>5} '
                          f'accepted {row["accepted"]:>5} TP {row["tp"]:>5} FP {row["fp"]:>5} '
                          f'precision {row["precision"]:.3f} recall {row["recall"]:.3f} '
                          f'false/query {row["false_per_query"]:.4f}', flush=True)
    results['seconds'] = time.perf_counter() - t_start
    return results


def run_drives(params: Path, model: tuple[str, str | None], data: Path, printer=print) -> dict:
    """Run the shipped detector (``params``) on every drive of DRIVE_TABLE with each setting of DRIVE_SETTINGS.

    ``model``: (configuration, weights or None) of the encoder of the Nordland drives in ``data``.
    """
    import itertools

    from .params import detector_config, load_params
    base = detector_config(load_params(params), {}, 'slam')
    encoder = cpu_encoder(*model)
    keys = list(DRIVE_SETTINGS)
    settings = []
    for values in itertools.product(*(DRIVE_SETTINGS[k] for k in keys)):
        cfg = dataclasses.replace(base, **dict(zip(keys, values)))
        label = ', '.join(f'{k} {v:g}' for k, v in zip(keys, values)) + (' (shipped)' if cfg == base else '')
        settings.append((label, cfg))
    rows = []
    for drive, what, tolerance in DRIVE_TABLE:
        frames = table_drive(drive, encoder, data)
        for label, cfg in settings:
            t0 = time.perf_counter()
            r = run_setting(frames, cfg, tolerance)
            row = {'drive': drive, 'what': what, 'setting': label, 'tolerance': tolerance,
                   'seconds': time.perf_counter() - t0, **r}
            rows.append(row)
            places = r['places']
            printer(f'drives {drive:<13} {label:<46} keyframes {r["keyframes"]:>5} accepted {r["accepted"]:>4} '
                  f'TP {r["tp"]:>4} FP {r["fp"]:>3} precision {r["precision"]:.3f} recall {r["recall"]:.3f} '
                  f'places closed {places["closed"]}/{places["revisited"]} (wrong {places["wrong"]})', flush=True)
    return {'detector': base.to_dict(), 'rows': rows}


def provenance() -> dict:
    """Describe what was measured.

    The commit, whether the detector's sources differ from it, the BLAS threads asked for and the
    load of the machine.
    """
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
