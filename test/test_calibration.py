"""The calibrated threshold (boq_vpr.detection.calibration) and the outcome of every frame.

On synthetic descriptors: the statistics, bad settings, tiny maps, and outcome counts that add up.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from boq_vpr.detection.calibration import background_peaks, judge, p_values, significance
from boq_vpr.errors import ConfigError
from boq_vpr.detection import OUTCOMES, DetectorConfig, LoopClosureDetector
from boq_vpr.map import MapDatabase


def test_background_peaks_set_the_best_place_aside_and_count_each_place_once():
    scores = np.array([0.9, 0.89, 0.6, 0.59, 0.5, 0.4, -np.inf])
    ids = np.array([10, 11, 40, 41, 70, 100, -1])
    np.testing.assert_allclose(background_peaks(scores, ids, radius=3), [0.6, 0.5, 0.4])
    np.testing.assert_allclose(background_peaks(scores, ids, radius=0), [0.89, 0.6, 0.59, 0.5, 0.4])


def test_significance_of_an_exponential_tail_matches_the_formula():
    rng = np.random.default_rng(0)
    background = np.sort(rng.exponential(0.02, 40))[::-1] + 0.3
    ids = np.arange(0, 400, 10)
    sig = significance(np.r_[0.3 + 0.02 * 30, background], np.r_[1000, ids], radius=3)
    assert sig is not None and sig.samples == 40
    u = background[-1]
    beta = np.sum(background[:-1] - u) / 39          # the other 39 exceedances give the scale
    x = (0.3 + 0.6 - u) / beta
    assert sig.excess == pytest.approx(x)
    assert sig.p_value == pytest.approx(1 - (1 - (1 + x / 39) ** -39) ** 40)
    assert sig.p_value < 1e-3 and sig.log10_p == pytest.approx(-math.log10(sig.p_value))
    # a best match inside the background is not significant
    weak = significance(np.r_[background[0] + 1e-4, background], np.r_[1000, ids], radius=3)
    assert weak.p_value > 0.1
    # scale invariance: the same scores on another scale and offset give the same probability
    same = significance(5 * np.r_[0.3 + 0.6, background] - 2, np.r_[1000, ids], radius=3)
    assert same.p_value == pytest.approx(sig.p_value)
    assert significance(np.array([0.9, 0.5, 0.4]), np.array([1, 20, 40]), radius=3) is None   # too few peaks


@pytest.mark.parametrize('complete', [False, True])
def test_the_significance_of_several_scores_at_once_is_judges_own(complete):
    rng = np.random.default_rng(3)
    background = np.sort(rng.normal(0.3, 0.05, 120))[::-1]
    scores = np.r_[background[:3] + 0.001, background[0] + np.linspace(0.0, 0.4, 12), [0.0, 1.0]]
    together = p_values(scores, background, 2000, complete, 3, 5)
    one_by_one = [judge(float(s), background, 2000, complete, 3, 5).p_value for s in scores]
    assert together.tolist() == one_by_one
    assert np.isnan(p_values(scores, background[:3], 2000, complete, 3, 5)).all()


def _null_p_values(sample, n_queries: int = 4000, n_map: int = 2000, seed: int = 1) -> np.ndarray:
    """P of the best of ``n_map`` background scores (no true match) for many queries."""
    rng = np.random.default_rng(seed)
    return np.asarray([significance(np.sort(sample(rng, n_map))[::-1][:50], np.arange(0, 500, 10), radius=3).p_value
                       for _ in range(n_queries)])


@pytest.mark.parametrize('scale, offset', [(0.05, 0.3), (0.001, 0.998)])   # a trained and a random-weights scale
def test_false_alarm_rate_on_exponential_tails_is_the_requested_one(scale, offset):
    p = _null_p_values(lambda rng, n: offset + scale * rng.exponential(1.0, n))
    for alpha in (0.1, 0.01):
        rate = float(np.mean(p <= alpha))
        assert alpha / 2 <= rate <= alpha * 2, (alpha, rate)


def test_false_alarm_rate_on_gaussian_backgrounds_is_below_the_requested_one():
    # a Gaussian tail is lighter than exponential: the test is conservative there
    p = _null_p_values(lambda rng, n: 0.3 + 0.05 * rng.standard_normal(n))
    for alpha in (0.1, 0.01):
        assert float(np.mean(p <= alpha)) <= alpha


@pytest.mark.parametrize('key, value, message', [
    ('false_alarm_rate', 0.7, r'false_alarm_rate=0.7: must be 0 \(off\) or in \(0, 0.5\]'),
    ('false_alarm_rate', -0.01, r'in \(0, 0.5\]'),
    ('calibration_k', 5, r'calibration_k=5: must be in \[10, 1000\]'),
    ('calibration_min_samples', 1, r'must be in \[2, calibration_k - 1\] = \[2, 49\]'),
    ('calibration_radius', -1, r'calibration_radius=-1: must be in \[0, 1000\]'),
])
def test_calibration_settings_out_of_range_are_refused_naming_the_range(key, value, message):
    with pytest.raises(ConfigError, match=message):
        DetectorConfig.from_dict({key: value})


def _stream(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((n, dim)).astype(np.float32)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def test_empty_and_tiny_maps_leave_frames_undecided_and_outcomes_add_up():
    config = DetectorConfig.from_dict({'false_alarm_rate': 0.001, 'exclusion_frames': 5, 'exclusion_time_s': 0.0,
                                       'temporal_consistency': 2, 'keyframe_min_time_s': 0.5})
    det = LoopClosureDetector(MapDatabase(64, 'test'), config)
    desc = _stream(200)
    results = []
    for i in range(200):
        results.append(det.process(desc[i], int(i * 0.25 * 1e9)))    # 4 Hz: every other frame is a keyframe
    outcomes = [r.outcome for r in results]
    assert set(outcomes) <= set(OUTCOMES)
    assert outcomes[0] == 'no_eligible_keyframe' and outcomes[1] == 'not_keyframe'
    first_queries = [o for o in outcomes if o != 'not_keyframe'][:12]
    # 5 keyframes inside the exclusion window, then fewer than 5 background places: undecided
    assert first_queries[:6] == ['no_eligible_keyframe'] * 6
    assert 'undecided' in first_queries
    assert all(r.reason for r in results if r.outcome != 'accepted')
    counts = det.outcome_counts
    assert sum(counts.values()) == 200 and set(counts) == set(OUTCOMES)
    assert counts['not_keyframe'] == 100
    # random descriptors: nothing to find; the sequence stage is still filling or finds nothing significant
    assert counts['accepted'] == 0 and counts['accumulating'] + counts['below_calibrated'] > 50


def test_relative_score_without_a_reference_is_undecided():
    from boq_vpr.map import Keyframe
    det = LoopClosureDetector(MapDatabase(64, 'test'),
                              DetectorConfig(mode='localization', relative_score=0.5, min_score=-1.0,
                                             false_alarm_rate=0.0, temporal_consistency=1))
    d = _stream(3)
    det.db.add(d[:2], [Keyframe(-1, 0), Keyframe(-1, 1)])
    r = det.process(d[2], 1)
    assert r.outcome == 'undecided' and 'relative_score' in r.reason
    assert det.process(d[2], 2).outcome != 'undecided'
