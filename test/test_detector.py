"""The loop-closure detector on descriptor streams whose truth is known.

A route that revisits its first half, with per-frame noise and perceptual-aliasing distractors.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from boq_vpr.errors import ConfigError, MapError
from boq_vpr.detection.keyframes import KeyframeSelector
from boq_vpr.detection import DetectorConfig, FrameResult, LoopClosureDetector
from boq_vpr.map import Keyframe, MapDatabase

D = 256
HZ = 10
NS = 1_000_000_000 // HZ


def place_vectors(n: int, width: int = 5, seed: int = 0) -> np.ndarray:
    """Return unit place descriptors along a route.

    Neighbours within ``width`` places look alike (cosine 1 - distance/width), places further apart
    are unrelated.
    """
    g = np.random.default_rng(seed).standard_normal((n + width, D)).astype(np.float32)
    p = np.stack([g[i:i + width].sum(0) for i in range(n)])
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def frame(p: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    x = p + sigma * rng.standard_normal(D).astype(np.float32) / math.sqrt(D)
    return x / np.linalg.norm(x)


class Route:
    """A route over places whose truth is known, with a revisit and aliasing distractors.

    First pass over places 0..199, a revisit of 0..99, then new places 300..399 with distractor
    frames that look like an old place (isolated aliasing) every 10 frames.
    """

    def __init__(self, sigma: float = 0.3, seed: int = 0, distractors: bool = True):
        rng = np.random.default_rng(seed + 1)
        places = place_vectors(400, seed=seed)
        self.place = list(range(200)) + list(range(100)) + list(range(300, 400))
        self.distractor = [False] * 300 + [distractors and i % 10 == 5 for i in range(100)]
        self.true_place = [p if not d else (37 + 13 * i) % 200
                           for i, (p, d) in enumerate(zip(self.place, self.distractor))]
        self.desc = np.stack([frame(places[p], sigma, rng) for p in self.true_place])
        self.revisit = range(200, 300)

    def run(self, det: LoopClosureDetector, frames=None) -> list[FrameResult]:
        out = []
        for t in (frames if frames is not None else range(len(self.place))):
            out.append(det.process(self.desc[t], t * NS, position=(float(self.place[t]), 0.0, 0.0), source=f'f{t}'))
        return out

    def correct(self, t: int, match_frame: int, tol: int = 2) -> bool:
        return match_frame < 200 and abs(self.place[match_frame] - self.place[t]) <= tol and not self.distractor[t]


PLAIN = {'false_alarm_rate': 0.0, 'temporal_consistency': 1, 'keyframe_min_time_s': 0.0,
         'keyframe_max_similarity': 1.0}


def detector(**kw) -> LoopClosureDetector:
    # each filter on its own: calibration, consistency and keyframe selection off unless asked for
    cfg = dict(exclusion_frames=20, exclusion_time_s=0.0, top_k=10, min_score=0.5, false_alarm_rate=0.0,
               temporal_consistency=1, keyframe_min_time_s=0.0, keyframe_max_similarity=1.0)
    cfg.update(kw)
    return LoopClosureDetector(MapDatabase(D, 'synthetic'), DetectorConfig.from_dict(cfg))


def accepted(results: list[FrameResult]) -> dict[int, int]:
    """Query frame -> accepted match (keyframe ids equal frame indices here)."""
    return {t: r.candidates[0].match_id for t, r in enumerate(results) if r.candidates}


def test_no_candidate_inside_the_exclusion_window():
    route = Route()
    det = detector(exclusion_frames=20, exclusion_time_s=4.0, min_score=-1.0)  # 4 s = 40 frames at 10 Hz
    results = route.run(det)
    assert [r.keyframe_id for r in results] == list(range(len(results)))
    assert results[0].reason == 'map empty'
    assert all(r.reason.startswith('exclusion window') for r in results[1:41])
    assert results[41].best.match_id == 0
    checked = 0
    for t, r in enumerate(results):
        for c in ([r.best] if r.best else []) + r.candidates:
            assert c.query_id == t
            assert t - c.match_id > 20 and c.query_stamp_ns - c.match_stamp_ns >= 4 * 10**9
            checked += 1
    assert checked > 300
    # the frame-count window alone
    results = route.run(detector(exclusion_frames=20, min_score=-1.0))
    assert all(t - r.best.match_id > 20 for t, r in enumerate(results) if r.best)
    assert results[21].best.match_id == 0 and results[20].best is None


def test_revisits_are_found_and_temporal_consistency_rejects_aliasing():
    route = Route()
    results = route.run(detector(temporal_consistency=3, consistency_tolerance=3))
    acc = accepted(results)
    assert acc, 'no loop closure found'
    wrong = {t: m for t, m in acc.items() if not route.correct(t, m)}
    assert not wrong, f'false loop closures: {wrong}'
    found = sum(t in acc for t in route.revisit)
    assert found >= 95, f'only {found} of 100 revisit frames closed a loop'
    # the chain needs 3 consecutive queries: the first two revisit frames wait for it
    assert 200 not in acc and 201 not in acc and 202 in acc
    assert results[201].reason == 'temporal consistency (2/3)'
    # without the consistency filter the isolated distractors get through
    acc1 = accepted(route.run(detector(temporal_consistency=1)))
    aliased = [t for t in acc1 if route.distractor[t]]
    assert len(aliased) >= 8, 'the distractors should look like real loop closures to a single query'
    assert 200 in acc1


def test_non_maximum_suppression_spreads_candidates():
    route = Route(distractors=False)
    frames = list(range(0, 260))
    wide = route.run(detector(top_k=10, max_candidates=5, nms_radius=0), frames)
    assert any(min(abs(a.match_id - b.match_id) for a, b in zip(r.candidates, r.candidates[1:])) <= 1
               for r in wide[200:] if len(r.candidates) > 1), 'without NMS the neighbours of the best match come too'
    nms = route.run(detector(top_k=10, max_candidates=5, nms_radius=3, min_score=0.0), frames)
    multi = 0
    for r in nms[200:]:
        ids = [c.match_id for c in r.candidates]
        assert all(abs(a - b) > 3 for i, a in enumerate(ids) for b in ids[i + 1:]), ids
        assert [c.rank for c in r.candidates] == list(range(len(ids)))
        assert all(x.score >= y.score for x, y in zip(r.candidates, r.candidates[1:]))
        multi += len(ids) > 1
    assert multi >= 50, 'NMS must keep well-separated candidates'
    assert all(r.candidates and route.correct(t, r.candidates[0].match_id) for t, r in enumerate(nms) if t >= 205)


def _recall(route: Route, results: list[FrameResult]) -> tuple[float, int]:
    acc = accepted(results)
    wrong = sum(not route.correct(t, m) for t, m in acc.items())
    return sum(t in acc for t in route.revisit) / 100, wrong


def test_relative_score_adapts_where_a_fixed_threshold_breaks():
    clear, murky = Route(sigma=0.3, seed=1), Route(sigma=1.0, seed=2)   # same-place cosine ~0.92 vs ~0.5
    fixed = dict(min_score=0.7, temporal_consistency=2)
    rec_clear, wrong_clear = _recall(clear, clear.run(detector(**fixed)))
    rec_murky, _ = _recall(murky, murky.run(detector(**fixed)))
    assert rec_clear >= 0.95 and wrong_clear == 0
    assert rec_murky <= 0.05, 'a threshold tuned on the clear route should fail on the murky one'
    relative = dict(min_score=0.0, relative_score=0.8, relative_window=5, temporal_consistency=2)
    for route in (clear, murky):
        results = route.run(detector(**relative))
        rec, wrong = _recall(route, results)
        assert rec >= 0.9 and wrong == 0, (route, rec, wrong)
        # the decision score is the relative one: comparable across routes
        revisit_scores = [results[t].decision_score for t in route.revisit]
        assert np.median(revisit_scores) > 1.0
        new_place = [results[t].decision_score for t in range(300, 400) if not route.distractor[t]]
        assert np.median(new_place) < 0.5


def test_localization_mode_leaves_the_map_alone():
    route = Route(distractors=False)
    db = MapDatabase(D, 'synthetic')
    db.add(route.desc[:200], [Keyframe(-1, t * NS, position=(float(t), 1.0, 0.0), frame_id='map') for t in range(200)])
    det = LoopClosureDetector(db, DetectorConfig.from_dict({**PLAIN, 'mode': 'localization', 'min_score': 0.5,
                                                             'temporal_consistency': 2}))
    results = route.run(det, range(200, 300))
    assert len(db) == 200
    assert all(r.keyframe_id is None for r in results)
    hits = [r for r in results if r.candidates]
    assert len(hits) >= 95 and results[0].reason == 'temporal consistency (1/2)'
    for t, r in zip(range(200, 300), results):
        if r.candidates:
            c = r.candidates[0]
            assert c.query_id is None and route.correct(t, c.match_id)
            assert c.match_keyframe.position == (float(c.match_id), 1.0, 0.0) and c.match_keyframe.frame_id == 'map'


def test_a_new_session_matches_old_sessions_at_once():
    route = Route(distractors=False)
    db = MapDatabase(D, 'synthetic')
    db.add(route.desc[:200], [Keyframe(-1, t * NS, session='monday') for t in range(200)])
    det = LoopClosureDetector(db, DetectorConfig.from_dict({**PLAIN, 'session': 'tuesday', 'exclusion_frames': 50,
                                                             'exclusion_time_s': 60.0, 'min_score': 0.5}))
    r = det.process(route.desc[200], 0)   # stamps restart at 0, like sim time
    assert r.candidates and r.candidates[0].match_id <= 2 and r.keyframe_id == 200
    assert db.keyframe(200).session == 'tuesday'


def test_reset_forgets_the_consistency_chain():
    route = Route(distractors=False)
    det = detector(temporal_consistency=3)
    results = route.run(det, range(0, 205))
    assert results[-1].candidates
    det.reset()
    r = route.run(det, [205, 206, 207])
    assert [bool(x.candidates) for x in r] == [False, False, True]
    assert len(det.db) == 208


def test_paused_mapping_matches_outside_the_exclusion_window_and_adds_nothing():
    route = Route(distractors=False)
    det = detector(exclusion_frames=20, exclusion_time_s=5.0, min_score=-1.0)
    route.run(det, range(0, 60))
    det.mapping = False
    assert det.search_limit(60 * NS) == 10   # 5 s = 50 frames before frame 60: keyframes 0..9 only
    paused = route.run(det, range(60, 80))
    assert len(det.db) == 60 and all(r.keyframe_id is None for r in paused)
    for t, r in zip(range(60, 80), paused):
        assert r.best is not None and t * NS - r.best.match_stamp_ns >= 5 * 10**9, (t, r.best)
        assert r.best.query_id is None
    det.mapping = True
    assert route.run(det, [80])[0].keyframe_id == 60


def test_configure_keeps_the_map_and_the_session_window():
    route = Route(distractors=False)
    db = MapDatabase(D, 'synthetic')
    db.add(route.desc[:100], [Keyframe(-1, t * NS, session='old') for t in range(100)])
    det = LoopClosureDetector(db, DetectorConfig.from_dict({**PLAIN, 'exclusion_frames': 30, 'min_score': 0.5}))
    route.run(det, range(100, 110))
    assert det.search_limit(110 * NS) == 100   # this session's keyframes are all inside the window
    det.configure(DetectorConfig.from_dict({**PLAIN, 'exclusion_frames': 5, 'exclusion_time_s': 0.0, 'min_score': 0.9,
                                              'top_k': 3}))
    assert det.config.min_score == 0.9 and len(db) == 110
    assert det.search_limit(110 * NS) == 105
    with pytest.raises(ConfigError):
        det.configure(DetectorConfig(min_score=2.0))
    assert det.config.min_score == 0.9, 'a refused configuration must leave the detector as it was'


def test_keyframe_selection_by_time_distance_and_novelty():
    route = Route(distractors=False)
    det = detector(keyframe_min_time_s=0.45)   # 10 Hz frames -> every 5th frame
    results = route.run(det, range(50))
    assert [t for t, r in enumerate(results) if r.keyframe_id is not None] == list(range(0, 50, 5))
    assert results[1].reason.startswith('not a keyframe') and len(det.db) == 10

    sel = KeyframeSelector(min_distance_m=1.0)
    x = route.desc[0]
    assert sel.check(x, 0, (0, 0, 0)).accept
    sel.accept(x, 0, (0, 0, 0))
    assert not sel.check(x, 1, (0.5, 0.5, 0)).accept
    assert sel.check(x, 2, (0.8, 0.8, 0)).accept
    assert sel.check(x, 2, None).accept          # no position: the distance test does not apply

    det = detector(keyframe_max_similarity=0.95)
    same = [det.process(route.desc[0], t * NS) for t in range(3)]
    assert [r.keyframe_id for r in same] == [0, None, None] and 'similarity' in same[1].reason
    assert det.process(route.desc[30], 3 * NS).keyframe_id == 1


def test_config_validation_names_the_bad_key_or_value():
    with pytest.raises(ConfigError, match=r'unknown detector parameter.*min_scor; valid: mode'):
        DetectorConfig.from_dict({'min_scor': 0.3})
    with pytest.raises(ConfigError, match='mode=.*slam, localization'):
        DetectorConfig.from_dict({'mode': 'mapping'})
    with pytest.raises(ConfigError, match='top_k must be int'):
        DetectorConfig.from_dict({'top_k': 2.5})
    with pytest.raises(ConfigError, match='min_score=1.5'):
        DetectorConfig.from_dict({'min_score': 1.5})
    with pytest.raises(ConfigError, match='max_candidates.*top_k'):
        DetectorConfig.from_dict({'top_k': 2, 'max_candidates': 3})
    with pytest.raises(ConfigError, match='geometric_features.*orb, sift'):
        DetectorConfig.from_dict({'geometric_features': 'surf'})
    cfg = DetectorConfig.from_dict({'geometric_verification': 'true', 'top_k': 4.0, 'min_score': 1})
    assert cfg.geometric_verification is True and cfg.top_k == 4 and cfg.min_score == 1.0
    assert DetectorConfig.from_dict(cfg.to_dict()) == cfg


def test_bad_descriptors_are_refused():
    det = detector()
    with pytest.raises(MapError, match=r'\[256\]'):
        det.process(np.ones(128, np.float32), 0)
    with pytest.raises(MapError, match='zero or not finite'):
        det.process(np.zeros(D, np.float32), 0)
    assert len(det.db) == 0


def test_slam_mode_without_an_exclusion_window_is_refused():
    with pytest.raises(ConfigError, match='slam mode needs an exclusion window'):
        DetectorConfig.from_dict({'exclusion_time_s': 0.0, 'exclusion_frames': 0})
    DetectorConfig.from_dict({'mode': 'localization', 'exclusion_time_s': 0.0, 'exclusion_frames': 0})


# ---------------------------------------------------------------------------------------------
# sessions: identity by id range, loops vs relocalizations

def _loop_drive(places: np.ndarray, laps: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [frame(places[i], 0.3, rng) for _ in range(laps) for i in range(len(places))]


def _run_session(db: MapDatabase, drive: list[np.ndarray], **kw) -> tuple[LoopClosureDetector, list[FrameResult]]:
    cfg = {**PLAIN, 'exclusion_time_s': 30.0, 'exclusion_frames': 50, 'min_score': 0.5, **kw}
    det = LoopClosureDetector(db, DetectorConfig.from_dict(cfg))
    return det, [det.process(d, t * 10**9) for t, d in enumerate(drive)]   # 1 Hz, stamps from 0 s


def test_a_loaded_map_with_the_same_label_and_overlapping_stamps_leaves_the_sessions_loops_alone():
    """Sim time restarting at 0 beside a loaded map stamped 0-199 s with the same (default) label."""
    old = place_vectors(200, seed=11)
    drive = _loop_drive(place_vectors(75, seed=12))        # a 75-place loop, driven twice
    loaded = MapDatabase(D, 'synthetic')
    loaded.add(old, [Keyframe(-1, t * 10**9) for t in range(200)])   # session label '' as the node's default
    _, alone = _run_session(MapDatabase(D, 'synthetic'), drive)
    det, beside = _run_session(loaded, drive)
    loops_alone = {t: r.candidates[0].match_id for t, r in enumerate(alone) if r.candidates}
    loops_beside = {t: r.candidates[0].match_id - 200 for t, r in enumerate(beside) if r.candidates}
    assert len(loops_alone) == 75 and all(loops_alone[75 + i] == i for i in range(75))
    assert loops_beside == loops_alone
    assert all(r.candidates[0].kind == 'loop' and r.candidates[0].same_session for r in beside if r.candidates)
    assert det.session_start == 200 and det.session_keyframes == 150
    # the window covers this session's last 50 keyframes (more than 30 s at 1 Hz): ids 300..349
    assert det.search_limit(150 * 10**9) == 200 + 100


def test_matches_into_earlier_sessions_are_relocalizations_and_loops_stay_loops():
    places = place_vectors(100, seed=21)
    rng = np.random.default_rng(3)
    db = MapDatabase(D, 'synthetic')
    db.add(np.stack([frame(p, 0.3, rng) for p in places[:60]]),
           [Keyframe(-1, (1000 + t) * 10**9, position=(float(t), 5.0, 0.0), frame_id='old_map') for t in range(60)])
    # today: places 60..99 (new), then 0..19 (the old map's), then 60..79 again (today's)
    route = list(range(60, 100)) + list(range(20)) + list(range(60, 80))
    det, results = _run_session(db, [frame(places[p], 0.3, rng) for p in route])
    kinds = {}
    for t, r in enumerate(results):
        if r.candidates:
            c = r.candidates[0]
            kinds[route[t], t >= 60] = c.kind
            row = dict(zip(('query_stamp', 'match_stamp', 'match_id', 'session', 'kind'), c.row()))
            if c.kind == 'relocalization':
                assert c.match_id < 60 and not c.same_session and row['session'] == 1.0 and row['kind'] == 1.0
                assert c.match_keyframe.frame_id == 'old_map'
            else:
                assert c.match_id >= 60 and c.same_session and row['session'] == 0.0 and row['kind'] == 0.0
    assert sum(k == 'relocalization' for k in kinds.values()) >= 18     # places 0..19 revisited
    assert sum(k == 'loop' for k in kinds.values()) >= 18                # places 60..79 revisited
    # localization mode: every match is a relocalization
    loc = LoopClosureDetector(db, DetectorConfig.from_dict({**PLAIN, 'mode': 'localization', 'min_score': 0.5}))
    r = loc.process(frame(places[5], 0.3, rng), 0)
    assert r.candidates and r.candidates[0].kind == 'relocalization' and not r.candidates[0].same_session


def test_a_stamp_going_back_within_a_session_is_refused_and_a_new_session_may_restart_time():
    det = detector()
    places = place_vectors(3, seed=5)
    det.process(places[0], 10 * 10**9)
    with pytest.raises(MapError, match='within one session'):
        det.process(places[1], 5 * 10**9)
    det.new_session()
    assert det.process(places[1], 0).keyframe_id == 1      # a new session: time may start over
    assert det.session_start == 1


def test_paused_mapping_queries_the_frames_the_keyframe_selector_takes():
    """With mapping off the filters still count keyframes, not camera frames.

    A 30 Hz camera, one keyframe per 0.5 s.
    """
    route = Route(distractors=False)

    def outcomes(mapping: bool) -> list[str]:
        det = detector(keyframe_min_time_s=0.5, exclusion_frames=5, min_score=-1.0)
        for t in range(40):                         # the map: one keyframe per second
            det.process(route.desc[t], t * 10**9)
        det.mapping = mapping
        start = 100 * 10**9
        return [det.process(route.desc[t % 40], start + (t * 10**9) // 30).outcome for t in range(60)]   # 2 s
    on, off = outcomes(True), outcomes(False)
    assert off.count('not_keyframe') == on.count('not_keyframe') == 56   # 4 of 60 frames queried
    assert [o == 'not_keyframe' for o in off] == [o == 'not_keyframe' for o in on]
