"""``boq-vpr bench loops --cost`` and ``--calibration`` at tiny sizes.

The structure of what they report and that every figure is a number (no timing thresholds: this
machine is shared).
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from boq_vpr.commands import bench_loops as bl
from boq_vpr.detection import OUTCOMES
from boq_vpr.evaluation import detector_cost, false_alarms
from boq_vpr.evaluation.drives import synthetic_drive


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_cost_structure():
    lines = []
    out = detector_cost.cost_table([200, 500], dim=64, queries=40, warmup=5, printer=lambda s, **_: lines.append(s),
                                   slam_sizes=[300])
    assert len(lines) == 3 and all(line.startswith('cost  keyframes') for line in lines[:2])
    assert lines[2].startswith('cost  slam session    300 keyframes')
    slam, = out['slam_rows']
    assert slam['session_keyframes'] == 300 and slam['latency_ms']['sequence']['n'] == 40
    # the sequence stage's own time is a part of each call of the detector with sequences
    for r in [slam] + out['rows']:
        stage, whole = r['latency_ms']['sequence_stage'], r['latency_ms']['sequence']
        assert stage['n'] == 40 and all(0 < stage[k] <= whole[k] for k in ('p50', 'p90', 'max'))
    assert 0 < slam['accepted_correct']['sequence'] <= slam['accepted']['sequence'] <= 40
    assert out['settings']['dim'] == 64 and set(out['settings']['detectors']) == {'search', 'single', 'sequence'}
    assert out['settings']['detectors']['single']['sequence_length'] == 1
    assert out['settings']['detectors']['sequence']['sequence_length'] > 1
    assert [r['keyframes'] for r in out['rows']] == [200, 500]
    for r in out['rows']:
        assert r['queries'] == 40 and r['search_k'] == (200 if r['keyframes'] <= 200 else 50)
        for name in ('search', 'single', 'sequence'):
            lat = r['latency_ms'][name]
            assert lat['n'] == 40 and all(_finite(lat[k]) and lat[k] >= 0 for k in ('p50', 'p90', 'mean', 'max'))
        assert all(_finite(v) for v in r['added_by_sequence_ms'].values())
        for name in ('single', 'sequence'):
            assert 0 <= r['accepted_correct'][name] <= r['accepted'][name] <= 40
            assert sum(r['outcomes'][name].values()) == 40 and set(r['outcomes'][name]) <= set(OUTCOMES)
        assert all(_finite(v) and v > 0 for v in r['rss_mb'].values())
        assert _finite(r['sequence_state']['cache_mb'])
    # the revisit is a strong one: the sequence detector finds it
    assert out['rows'][-1]['accepted_correct']['sequence'] > 0


def test_revisit_queries_follow_the_map():
    frames = synthetic_drive(32, n=100, rate_hz=2.0)
    q, stamps, truth = detector_cost.revisit_queries(frames.descriptors, frames.stamps_ns, 20)
    assert q.shape == (20, 32) and np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
    assert list(truth) == list(range(40, 60))
    assert stamps[0] == frames.stamps_ns[-1] + 500_000_000 and np.all(np.diff(stamps) == 500_000_000)
    cos = np.sum(q * frames.descriptors[truth], axis=1)
    assert np.all(cos > 0.9)
    with pytest.raises(Exception):
        detector_cost.revisit_queries(frames.descriptors, frames.stamps_ns, 101)


def test_calibration_structure():
    lines = []
    out = false_alarms.calibration_table([50, 200], rates=(0.01, 0.001), sources=('synthetic',), synthetic_queries=150,
                               printer=lambda s, **_: lines.append(s))
    maps = len(false_alarms.CALIBRATION_SYNTHETIC_SEEDS)
    assert len(out['rows']) == 4 * maps and len(out['pooled']) == 4 and len(lines) == 4 * maps + 4
    assert {(r['keyframes'], r['requested_rate']) for r in out['rows']} == {(50, 0.01), (50, 0.001), (200, 0.01),
                                                                           (200, 0.001)}
    assert len({r['map'] for r in out['rows']}) == 2 * maps
    for p in out['pooled']:
        key = (p['keyframes'], p['requested_rate'])
        mine = [r for r in out['rows'] if (r['keyframes'], r['requested_rate']) == key]
        assert p['maps'] == maps and p['accepted'] == sum(r['accepted'] for r in mine)
        assert p['queries'] == 150 * maps
    for r in out['rows']:
        assert r['source'] == 'synthetic' and r['queries'] == 150
        assert 0 <= r['accepted'] <= r['queries'] and sum(r['outcomes'].values()) == r['queries']
        assert r['outcomes']['accepted'] == r['accepted']
        assert _finite(r['measured_rate']) and _finite(r['ratio'])
        assert r['ratio'] == pytest.approx(r['measured_rate'] / r['requested_rate'])
        lo, hi = r['measured_rate_ci95']
        assert 0 <= lo <= r['measured_rate'] <= hi <= 1
    for r in out['settings']['detector'].values():
        assert r['temporal_consistency'] == 1 and r['mode'] == 'localization'
    json.dumps(out)


def test_nordland_plan_keeps_queries_off_the_map():
    plan = {(e['keyframes'], e['start']): e
            for e in false_alarms.nordland_calibration_plan([50, 200, 1000, 3576, 10000], starts=(0, 1200, 2400))}
    assert len(plan) == 15
    assert np.array_equal(plan[50, 0]['queries'], np.arange(150, 1650)) and plan[50, 0]['restart'] == 1500
    # past the map to the end of the traversal, then from its start
    q = plan[1000, 1200]['queries']
    assert np.array_equal(q, np.r_[2300:3576, 0:224]) and plan[1000, 1200]['restart'] == 1276
    assert false_alarms._spans(q) == '2300:3576, 0:224'
    assert plan[3576, 0]['queries'] is None and 'no row' in plan[3576, 0]['note']
    assert all(plan[10000, s]['queries'] is None for s in (0, 1200, 2400))
    for (n, start), e in plan.items():
        q = e['queries']
        if q is not None:
            # no query within 100 frames of the map, none twice, every one a frame of the traversal
            assert q.size == 1500 and np.unique(q).size == q.size and q.min() >= 0 and q.max() < 3576
            assert np.all((q >= start + n + 100) | (q < start - 100))
            assert np.all(q[:e['restart']] > start) and np.all(q[e['restart']:] < start)


def test_calibration_rows_pool_per_size_with_the_range_of_the_maps():
    rows = [{'source': 'nordland', 'season': 'summer', 'keyframes': 50, 'requested_rate': 0.01, 'accepted': k,
             'queries': 1000, 'ratio': k / 1000 / 0.01} for k in (5, 30)]
    rows.append({**rows[0], 'season': 'winter'})
    p = {(r['season'], r['keyframes']): r for r in false_alarms.pooled(rows)}
    assert p['summer', 50]['maps'] == 2 and p['summer', 50]['accepted'] == 35 and p['summer', 50]['queries'] == 2000
    assert p['summer', 50]['ratio'] == pytest.approx(1.75)
    assert (p['summer', 50]['map_ratio_min'], p['summer', 50]['map_ratio_max']) == (0.5, 3.0)
    assert p['winter', 50]['maps'] == 1 and p['winter', 50]['accepted'] == 5
    assert 'maps 0.50-3.00' in false_alarms.format_pooled_row(p['summer', 50])


def test_binomial_interval():
    assert false_alarms.binomial_interval(0, 100)[0] == 0.0
    lo, hi = false_alarms.binomial_interval(5, 1000)
    assert lo < 0.005 < hi


def test_sections_and_flags():
    p = argparse.ArgumentParser()
    bl.add_arguments(p)
    args = p.parse_args([])
    assert bl.sections(args) == {'tables'}
    assert bl.sections(p.parse_args(['--cost'])) == {'tables', 'cost'}
    assert bl.sections(p.parse_args(['--cost', '--only', 'cost,calibration'])) == {'cost', 'calibration'}
    args = p.parse_args(['--only', 'cost'])
    assert args.cost_sizes == [1000, 10000, 100000] and args.cost_dim == 2048
    assert args.calibration_sizes == [50, 200, 1000, 10000]
    with pytest.raises(SystemExit):
        p.parse_args(['--only', 'bogus'])
