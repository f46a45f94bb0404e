"""What a frame's outputs mean (boq_vpr.pipeline): loops vs relocalizations, honest covariances."""
from __future__ import annotations

import numpy as np
import pytest

from boq_vpr.detection import DetectorConfig, LoopClosureDetector
from boq_vpr.map import Keyframe, MapDatabase
from boq_vpr.pipeline import (MIN_POSITION_VARIANCE, UNKNOWN_ORIENTATION_VARIANCE, FramePipeline,
                              auto_position_variance, keyframe_spacing, pose_covariance)

D = 32


def _unit(rng, n):
    x = rng.standard_normal((n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_keyframe_spacing_steps_within_one_session_and_frame_only():
    kfs = [Keyframe(0, 0, (0.0, 0.0, 0.0), frame_id='a'), Keyframe(1, 1, (2.0, 0.0, 0.0), frame_id='a'),
           Keyframe(2, 2, (4.0, 0.0, 0.0), frame_id='a'),
           Keyframe(3, 3, (500.0, 0.0, 0.0), frame_id='b'),          # another frame: no step
           Keyframe(4, 4, None, frame_id='b'),                       # no position: breaks the chain
           Keyframe(5, 5, (501.0, 0.0, 0.0), frame_id='b'),
           Keyframe(6, 6, (800.0, 0.0, 0.0), frame_id='b', session='other')]   # another session: no step
    assert keyframe_spacing(kfs) == pytest.approx(2.0)
    assert keyframe_spacing([Keyframe(0, 0, None)]) is None


def test_position_variance_follows_the_map_and_orientation_says_when_unknown():
    db = MapDatabase(D, 'x')
    db.add(_unit(np.random.default_rng(0), 3), [Keyframe(-1, t, (0.5 * t, 0.0, 0.0)) for t in range(3)])
    assert auto_position_variance(db) == pytest.approx(0.25)
    close = MapDatabase(D, 'x')
    close.add(_unit(np.random.default_rng(1), 3), [Keyframe(-1, t, (0.01 * t, 0.0, 0.0)) for t in range(3)])
    assert auto_position_variance(close) == MIN_POSITION_VARIANCE
    assert auto_position_variance(MapDatabase(D, 'x')) is None
    known = np.reshape(pose_covariance(True, 0.25, 0.1), (6, 6))
    unknown = np.reshape(pose_covariance(False, 0.25, 0.1), (6, 6))
    assert np.allclose(np.diag(known), [0.25] * 3 + [0.1] * 3)
    assert np.allclose(np.diag(unknown), [0.25] * 3 + [UNKNOWN_ORIENTATION_VARIANCE] * 3)
    assert np.count_nonzero(known - np.diag(np.diag(known))) == 0


def test_detect_splits_loops_from_relocalizations():
    rng = np.random.default_rng(2)
    old = _unit(rng, 20)
    db = MapDatabase(D, 'x')
    db.add(old, [Keyframe(-1, 1000 + t, (float(t), 0.0, 0.0), frame_id='old') for t in range(20)])
    cfg = DetectorConfig.from_dict({'exclusion_frames': 3, 'exclusion_time_s': 0.0, 'min_score': 0.9,
                                    'false_alarm_rate': 0.0, 'temporal_consistency': 1, 'keyframe_min_time_s': 0.0,
                                    'keyframe_max_similarity': 1.0, 'max_candidates': 2})
    pipeline = FramePipeline(None, LoopClosureDetector(db, cfg))
    new = _unit(rng, 5)
    for t, d in enumerate(new):                       # a new session, stamps before the old map's
        out = pipeline.detect(d, t)
        assert out.loop is None and out.relocalization is None
    out = pipeline.detect(old[7], 10)                 # a place of the old map
    assert out.loop is None and out.relocalization.match_id == 7 and out.rows[0][3:5] == (1.0, 1.0)
    out = pipeline.detect(new[0], 11)                 # this session's first place, outside the window
    assert out.relocalization is None and out.loop.match_id == 20 and out.rows[0][3:5] == (0.0, 0.0)
