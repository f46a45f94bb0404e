"""The shipped detector (config/vpr.yaml) on real descriptors.

The model resnet18_nordland on Nordland frames, through the same detector library as the node. The
two-season drive runs on the section shipped with the package (so in CI too); summer alone needs the
whole traversal (../shared). The figures behind the defaults: ``boq-vpr bench loops``
(docs/detector.md).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from boq_vpr import evaluation as ev
from boq_vpr.evaluation.drives import nordland_drive, run_setting
from boq_vpr.evaluation.false_alarms import nordland_calibration_plan, nordland_rows
from boq_vpr.evaluation.loops import DEFAULT_PARAMS
from boq_vpr.detection import OUTCOMES
from boq_vpr.encoder import Encoder

# The measured false-alarm rate per query stays within this factor of the requested one
# (docs/detector.md, "False alarms by map size").
FACTOR = 3.0


@pytest.fixture(scope='module')
def shipped():
    return ev.detector_config(ev.load_params(DEFAULT_PARAMS), {}, 'slam')


@pytest.fixture(scope='module')
def encoder():
    return Encoder('resnet18_nordland', backend='torch', device='cpu', precision='fp32', batch_size=64)


@pytest.fixture(scope='module')
def two_season(encoder, heldout_dir):
    return nordland_drive('two_season', encoder, heldout_dir)


@pytest.fixture(scope='module')
def summer(encoder, nordland_dir):
    return nordland_drive('summer', encoder, nordland_dir)


def _at_rate(frames, seconds_per_frame: float):
    return dataclasses.replace(frames, stamps_ns=np.round(np.arange(len(frames)) * seconds_per_frame * 1e9)
                               .astype(np.int64))


def test_two_seasons_close_loops_at_high_precision(shipped, two_season):
    # summer then winter over the same 1176 frames at 1 frame per second (the demo's drive)
    assert shipped.sequences and shipped.calibrated, 'the shipped config must use sequences'
    r = run_setting(two_season, shipped)
    print(f'two seasons, shipped config: {r["accepted"]} accepted, {r["tp"]} true, {r["fp"]} false, '
          f'precision {r["precision"]:.3f}, recall {r["recall"]:.3f}, outcomes {r["outcomes"]}')
    assert r['precision'] >= 0.99 and r['recall'] >= 0.30
    assert sum(r['outcomes'].values()) == r['frames'] and set(r['outcomes']) == set(OUTCOMES)
    assert r['outcomes']['accepted'] == r['accepted'] and r['outcomes']['accumulating'] > 0


@pytest.mark.parametrize('seconds_per_frame', [1.0, 0.1])
def test_summer_alone_publishes_at_most_one_loop_per_1000_keyframes(shipped, summer, seconds_per_frame):
    # no place is revisited: every loop would be false. At 10 frames per second the keyframe
    # selector takes every fifth frame.
    r = run_setting(_at_rate(summer, seconds_per_frame), shipped)
    print(f'summer at {1 / seconds_per_frame:g} fps: {r["keyframes"]} keyframes, {r["accepted"]} accepted')
    assert r['accepted'] <= r['keyframes'] / 1000
    assert sum(r['outcomes'].values()) == r['frames']


@pytest.mark.parametrize('rate', [0.01, 0.001])
def test_the_requested_false_alarm_rate_holds_on_real_descriptors(shipped, summer, rate):
    # every keyframe decides alone (temporal consistency off), so accepted loops per query are the
    # false-alarm rate per query
    per_query = dataclasses.replace(shipped, temporal_consistency=1, false_alarm_rate=rate)
    r = run_setting(summer, per_query)
    measured = r['fp'] / r['queries']
    print(f'requested {rate}, measured {measured:.4f} ({r["fp"]} of {r["queries"]} queries)')
    assert measured <= FACTOR * rate


def test_a_small_map_that_starts_with_a_stop_keeps_the_requested_false_alarm_rate(summer):
    # summer frames 0-16 are one image (the train standing at a station): a map of frames 0:50 and 1500
    # later summer frames as queries, each deciding alone. Judged by the sums of its lines, the map's
    # last keyframes stood out of the rest by themselves: 10x the rate asked
    plan, = nordland_calibration_plan([50], starts=(0,))
    row, = nordland_rows(summer.descriptors, [plan], [0.01])
    print(f'{row["accepted"]} false alarms in {row["queries"]} queries')
    assert row['queries'] == 1500 and row['outcomes']['accepted'] == row['accepted']
    assert row['measured_rate'] <= FACTOR * 0.01
