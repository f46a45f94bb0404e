"""The loop-closure detector: a descriptor stream in, accepted loop candidates out.

Two modes. ``slam``: each new keyframe queries the keyframes outside an exclusion window (recent
keyframes of the running session, by time and/or count), then joins the map. ``localization``:
every frame queries a prebuilt map, which is never modified.

The running session is an identity, not a label: the keyframes this detector added since it was
attached to the map (or since ``new_session``), i.e. an id range. Keyframes that were already in the
map (a loaded map, earlier sessions, whatever their label or stamps) are never inside the exclusion
window, and a match into them is a *relocalization*, not a loop (``KINDS``).

Per query, in order: top-k search -> calibrated threshold (``false_alarm_rate``, see
``boq_vpr.calibration``) -> absolute score threshold -> relative score threshold -> non-maximum
suppression -> temporal consistency -> geometric verification -> at most ``max_candidates``
accepted candidates, best first.

Every processed frame ends with exactly one outcome (``OUTCOMES``): accepted, or the stage that
rejected it. The detector counts them (``outcome_counts``).
"""
from __future__ import annotations

import array
import bisect
import collections
import dataclasses
import logging
import math
import threading
from dataclasses import dataclass, field

import numpy as np

from .calibration import DEFAULT_K as CALIBRATION_K, DEFAULT_MIN_SAMPLES, significance
from .errors import ConfigError, MapError
from .geometric import FEATURES, GeometricVerifier
from .keyframes import KeyframeSelector
from .values import NS_PER_S, parse_bool
from .map import Keyframe, MapDatabase

log = logging.getLogger(__name__)

MODES = ('slam', 'localization')

# The outcome of every processed frame: accepted, or the stage that decided against it.
OUTCOMES: dict[str, str] = {
    'accepted': 'a loop closure was accepted',
    'not_keyframe': 'slam mode: the keyframe selector did not take the frame (time, distance or novelty)',
    'no_eligible_keyframe': 'the map is empty, or every keyframe is inside the exclusion window',
    'undecided': 'no reference to decide with yet: too few background keyframes for the calibrated '
                 'threshold, or no recent frame for the relative score',
    'below_calibrated': 'the best match is not significant at false_alarm_rate',
    'below_min_score': 'the best match is below min_score',
    'below_relative_score': 'the best match is below relative_score x the recent self-similarity',
    'not_consistent': 'temporal consistency: not yet temporal_consistency consistent queries',
    'failed_geometric': 'geometric verification rejected every candidate',
}


# What an accepted match means to a back end. ``loop``: both ends are keyframes of the running slam
# session (the query and the match share one odometry frame and pose graph). ``relocalization``: the
# match is a keyframe of another session or of a prebuilt map (its pose is in that map's frame).
KINDS = ('loop', 'relocalization')

# Columns of a candidate table row (the node's ~/candidates, read back by the evaluator).
# session: 0 = the match is a keyframe of the running session, 1 = of an earlier session or a
# prebuilt map (keyframes that were in the map when the session started); kind: index into KINDS.
CANDIDATE_COLUMNS = ('query_stamp', 'match_stamp', 'match_id', 'session', 'kind', 'score', 'rank', 'verified',
                     'inliers')


@dataclass
class LoopCandidate:
    """One accepted (or best raw) match of a query against the map."""

    query_id: int | None         # keyframe id of the query when it joined the map (slam mode), else None
    query_stamp_ns: int
    match_id: int
    match_stamp_ns: int
    score: float                 # cosine similarity
    rank: int                    # 0 = best
    verified: bool               # passed geometric verification (False when disabled)
    inliers: int                 # RANSAC inliers (0 when disabled)
    match_keyframe: Keyframe     # carries the matched pose / frame_id when known
    kind: str = 'loop'           # a key of KINDS

    @property
    def same_session(self) -> bool:
        """The match is a keyframe of the running session (what makes it a loop)."""
        return self.kind == 'loop'

    def row(self) -> tuple[float, ...]:
        """The candidate as a row of CANDIDATE_COLUMNS (stamps in seconds)."""
        return (self.query_stamp_ns / NS_PER_S, self.match_stamp_ns / NS_PER_S, float(self.match_id),
                0.0 if self.same_session else 1.0, float(KINDS.index(self.kind)), float(self.score),
                float(self.rank), 1.0 if self.verified else 0.0, float(self.inliers))


@dataclass
class DetectorConfig:
    """Every filter of the detector. ``from_dict`` validates and names bad keys and values.

    Fields:
      mode: 'slam' (keyframes query the past outside the exclusion window, then join the map) or
        'localization' (every frame queries a read-only prebuilt map).
      session: session label given to the keyframes this detector adds (slam mode). A label only:
        the exclusion window and the loop/relocalization split go by the session's id range.
      top_k: neighbours retrieved per query before filtering.
      exclusion_time_s: slam mode: keyframes of the running session younger than this (relative to
        the query stamp) are never matched. 0 = off.
      exclusion_frames: slam mode: the most recent this-many keyframes of the running session are
        never matched. 0 = off. With both set, the larger window wins.
      min_score: absolute threshold on the cosine similarity of a match.
      relative_score: relative threshold: a match is kept only if its score divided by the
        reference score (the best similarity between the query and the ``relative_window`` most
        recent queries/keyframes, i.e. how similar the place looks to itself a moment ago) is at
        least this. 0 = off. Adapts to environments where all scores are high or low.
      relative_window: how many recent queries/keyframes give the reference score.
      temporal_consistency: number of consecutive queries whose matches must be consecutive in
        the map (within ``consistency_tolerance`` keyframe ids) before a match is accepted.
        1 = off (every query decides alone).
      consistency_tolerance: largest id step between the matches of consecutive queries that
        still counts as consecutive.
      consistency_max_gap_s: a consistency chain breaks when consecutive queries are further apart
        in time than this. 0 = never.
      nms_radius: non-maximum suppression: a candidate within this many keyframe ids of a
        better-ranked one is dropped. 0 = off.
      max_candidates: accepted candidates returned per query, best first.
      geometric_verification: check candidates with local features + RANSAC on stored keyframe
        thumbnails (needs images given to ``process``; in localization mode a map built with
        thumbnails).
      geometric_features: 'orb' or 'sift'.
      geometric_ratio: Lowe's ratio test threshold.
      geometric_min_inliers: RANSAC inliers needed to verify a candidate.
      geometric_ransac_px: RANSAC epipolar threshold in pixels of the working image.
      geometric_working_side: images are resized to this longer side before feature extraction.
      store_thumbnails: slam mode: store keyframe thumbnails in the map (default: when geometric
        verification is on).
      keyframe_min_time_s: slam mode: minimum time between keyframes. 0 = off.
      keyframe_min_distance_m: slam mode: minimum travelled distance between keyframes (when
        positions are given). 0 = off.
      keyframe_max_similarity: slam mode: a frame whose cosine similarity to the last keyframe
        exceeds this is not novel enough to become a keyframe. 1 = off.
      false_alarm_rate: calibrated threshold: accept a best match only if a query without any true
        match in the map would produce one at least as significant with at most this probability
        (per query), judged from the query's own background scores (``boq_vpr.calibration``).
        0 = off; otherwise in (0, 0.5].
      calibration_k: neighbours searched per query to estimate the background (>= top_k is used).
      calibration_radius: keyframes within this many ids of a better one belong to the same place
        (set aside from the background, and one background peak per place).
      calibration_min_samples: background peaks needed for a decision; fewer (an empty or tiny
        map) leave the frame undecided.
    """

    mode: str = 'slam'
    session: str = ''
    top_k: int = 10
    exclusion_time_s: float = 30.0
    exclusion_frames: int = 50
    min_score: float = 0.0
    relative_score: float = 0.0
    relative_window: int = 5
    temporal_consistency: int = 3
    consistency_tolerance: int = 3
    consistency_max_gap_s: float = 0.0
    nms_radius: int = 3
    max_candidates: int = 1
    geometric_verification: bool = False
    geometric_features: str = 'orb'
    geometric_ratio: float = 0.8
    geometric_min_inliers: int = 25
    geometric_ransac_px: float = 3.0
    geometric_working_side: int = 320
    store_thumbnails: bool | None = None
    keyframe_min_time_s: float = 0.5
    keyframe_min_distance_m: float = 0.0
    keyframe_max_similarity: float = 0.9
    false_alarm_rate: float = 0.01
    calibration_k: int = CALIBRATION_K
    calibration_radius: int = 3
    calibration_min_samples: int = DEFAULT_MIN_SAMPLES

    @classmethod
    def from_dict(cls, d: dict) -> 'DetectorConfig':
        """A validated configuration from a dict (e.g. ROS parameters); unknown keys are an error."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(f'unknown detector parameter(s) {", ".join(unknown)}; valid: {", ".join(names)}')
        kwargs = {}
        for key, value in d.items():
            default = names[key].default
            try:
                if key == 'store_thumbnails':
                    kwargs[key] = None if value is None else parse_bool(key, value)
                elif isinstance(default, bool):
                    kwargs[key] = parse_bool(key, value)
                elif isinstance(default, int):
                    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                        raise ValueError
                    kwargs[key] = int(value)
                elif isinstance(default, float):
                    if isinstance(value, bool):
                        raise ValueError
                    kwargs[key] = float(value)
                else:
                    kwargs[key] = str(value)
            except (TypeError, ValueError):
                raise ConfigError(f'detector parameter {key} must be {type(default).__name__}, got {value!r}') from None
        config = cls(**kwargs)
        config.validate()
        return config

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """ConfigError naming the first bad value."""
        def bad(key: str, what: str):
            raise ConfigError(f'detector parameter {key}={getattr(self, key)!r}: {what}')
        if self.mode not in MODES:
            bad('mode', f'must be one of {", ".join(MODES)}')
        for key in ('top_k', 'relative_window', 'temporal_consistency', 'max_candidates', 'geometric_min_inliers'):
            if getattr(self, key) < 1:
                bad(key, 'must be >= 1')
        for key in ('exclusion_time_s', 'exclusion_frames', 'relative_score', 'consistency_tolerance',
                    'consistency_max_gap_s', 'nms_radius', 'keyframe_min_time_s', 'keyframe_min_distance_m'):
            value = getattr(self, key)
            if value < 0 or (isinstance(value, float) and not math.isfinite(value)):
                bad(key, 'must be a finite value >= 0')
        if not -1.0 <= self.min_score <= 1.0:
            bad('min_score', 'a cosine similarity threshold must be in [-1, 1]')
        if not -1.0 <= self.keyframe_max_similarity <= 1.0:
            bad('keyframe_max_similarity', 'must be in [-1, 1] (1 = off)')
        if self.geometric_min_inliers < 8:
            bad('geometric_min_inliers', 'must be >= 8')
        if not 0.0 < self.geometric_ratio <= 1.0:
            bad('geometric_ratio', 'must be in (0, 1]')
        if self.geometric_ransac_px <= 0:
            bad('geometric_ransac_px', 'must be > 0')
        if self.geometric_working_side < 32:
            bad('geometric_working_side', 'must be >= 32')
        if self.geometric_features not in FEATURES:
            bad('geometric_features', f'must be one of {", ".join(FEATURES)}')
        if self.max_candidates > self.top_k:
            bad('max_candidates', f'cannot exceed top_k ({self.top_k})')
        if self.mode == 'slam' and self.exclusion_time_s == 0 and self.exclusion_frames == 0:
            bad('exclusion_frames', 'slam mode needs an exclusion window (exclusion_time_s or exclusion_frames > 0): '
                                    'without one every keyframe matches its own predecessor')
        if not (self.false_alarm_rate == 0.0 or 0.0 < self.false_alarm_rate <= 0.5) or \
                not math.isfinite(self.false_alarm_rate):
            bad('false_alarm_rate', 'must be 0 (off) or in (0, 0.5] (a probability per query, e.g. 0.001)')
        if not 10 <= self.calibration_k <= 1000:
            bad('calibration_k', 'must be in [10, 1000]')
        if not 0 <= self.calibration_radius <= 1000:
            bad('calibration_radius', 'must be in [0, 1000]')
        if not 2 <= self.calibration_min_samples < self.calibration_k:
            bad('calibration_min_samples', f'must be in [2, calibration_k - 1] = [2, {self.calibration_k - 1}]')

    @property
    def calibrated(self) -> bool:
        return self.false_alarm_rate > 0

    def warnings(self) -> list[str]:
        """Settings under which the thresholds cannot keep false loops out (for start-up logs)."""
        out = []
        if not self.calibrated and self.min_score <= 0 and self.relative_score <= 0:
            out.append(f'no threshold is active (false_alarm_rate 0 = calibration off, min_score {self.min_score:g} '
                       '<= 0, relative_score 0): every best match outside the exclusion window can be published; '
                       'set false_alarm_rate (e.g. 0.001)')
        elif not self.calibrated and self.min_score <= 0:
            out.append(f'calibration is off and min_score is {self.min_score:g}: only relative_score filters matches')
        return out


@dataclass
class FrameResult:
    """What the detector made of one frame."""

    keyframe_id: int | None      # id if the frame joined the map as a keyframe (slam mode), else None
    candidates: list[LoopCandidate] = field(default_factory=list)  # accepted loop closures, best first
    # score the accept/reject decision was made on (for PR curves): the best match's cosine score,
    # divided by the reference score when relative_score > 0; nan if no match
    decision_score: float = math.nan
    best: LoopCandidate | None = None  # best raw match outside the exclusion window before thresholds
    reason: str = ''             # short reason when nothing was accepted
    outcome: str = ''            # a key of OUTCOMES


@dataclass
class _Chain:
    match_id: int
    length: int


class LoopClosureDetector:
    """Turns descriptors (one per frame) into loop-closure candidates against ``db``. Thread-safe."""

    def __init__(self, db: MapDatabase, config: DetectorConfig) -> None:
        self.db = db
        self._lock = threading.RLock()
        self.new_session()
        self._warned_no_image = False
        self._warned_no_thumbnail = False
        # slam mode: whether keyframes join the map (False: frames are matched, with the exclusion
        # window, and nothing is added; a SLAM system pausing its map)
        self.mapping = True
        self.outcome_counts: collections.Counter[str] = collections.Counter({k: 0 for k in OUTCOMES})
        self.configure(config)

    def configure(self, config: DetectorConfig) -> None:
        """New settings (validated first); the map and the current session's exclusion window are kept,
        the filters' running state is reset."""
        config.validate()
        verifier = (GeometricVerifier(config.geometric_features, ratio=config.geometric_ratio,
                                      ransac_threshold_px=config.geometric_ransac_px,
                                      min_inliers=config.geometric_min_inliers,
                                      working_side=config.geometric_working_side)
                    if config.geometric_verification else None)
        with self._lock:
            self.config = config
            self.selector = KeyframeSelector(config.keyframe_min_time_s, config.keyframe_min_distance_m,
                                             config.keyframe_max_similarity)
            self.verifier = verifier
            self.store_thumbnails = (config.geometric_verification if config.store_thumbnails is None
                                     else config.store_thumbnails)
            self.reset()

    def reset(self) -> None:
        """Forget temporal-consistency, relative-score and keyframe-selection state (the map is kept)."""
        with self._lock:
            self._chains: list[_Chain] = []
            self._last_query_ns: int | None = None
            self._recent: collections.deque[np.ndarray] = collections.deque(maxlen=self.config.relative_window)
            self.selector.reset()

    def new_session(self) -> None:
        """Start a new session: keyframes already in the map become an earlier session (never inside
        the exclusion window; matches into them are relocalizations). Called on attaching to a map
        and after the map was cleared."""
        with self._lock:
            self._session_start = self.db.next_id
            # keyframes this session added, in id order, and their stamps (non-decreasing within a
            # session); 16 bytes a keyframe
            self._session_ids = array.array('q')
            self._session_stamps = array.array('q')
            self._last_stamp_ns: int | None = None
            if hasattr(self, 'config'):
                self.reset()

    @property
    def session_start(self) -> int:
        """The first keyframe id of the running session."""
        return self._session_start

    @property
    def session_keyframes(self) -> int:
        """Keyframes the running session added to the map."""
        return len(self._session_ids)

    # ------------------------------------------------------------------ helpers
    def search_limit(self, stamp_ns: int) -> int:
        """Matches of a query at ``stamp_ns`` must have ids below this (slam mode: the exclusion window
        of the running session). The window covers only this session's own keyframes (its id range),
        whatever the labels and stamps of the keyframes that were in the map before it."""
        c = self.config
        next_id = self.db.next_id
        cut = next_id
        ids = self._session_ids
        if not ids:
            return cut
        if c.exclusion_frames > 0:
            cut = min(cut, ids[max(0, len(ids) - c.exclusion_frames)])
        if c.exclusion_time_s > 0:
            first = bisect.bisect_left(self._session_stamps, stamp_ns - int(round(c.exclusion_time_s * NS_PER_S)))
            if first < len(ids):
                cut = min(cut, ids[first])
        return cut

    def kind_of(self, match_id: int) -> str:
        """``loop`` for a keyframe of the running slam session, else ``relocalization``."""
        return 'loop' if self.config.mode == 'slam' and match_id >= self._session_start else 'relocalization'

    def _reference_score(self, q: np.ndarray) -> float | None:
        if not self._recent:
            return None
        return float(max(float(np.dot(q, r)) for r in self._recent))

    def _candidate(self, query_id, stamp_ns, match_id, score, rank) -> LoopCandidate:
        kf = self.db.keyframe(int(match_id))
        return LoopCandidate(query_id, int(stamp_ns), int(match_id), kf.stamp_ns, float(score), rank, False, 0, kf,
                             self.kind_of(int(match_id)))

    # ------------------------------------------------------------------ main entry
    def process(self, descriptor: np.ndarray, stamp_ns: int, position=None, orientation=None, frame_id: str = '',
                image: np.ndarray | None = None, source: str = '') -> FrameResult:
        """One frame: query the map, filter, and (slam mode with ``mapping`` on, keyframes only) add it
        to the map. With ``mapping`` off, slam mode queries the same frames (the keyframe selector
        still decides which frames are queried, so every filter keeps its meaning in keyframes) and
        adds nothing. A stamp before the previous frame's of the same session is a ``MapError``
        (a new session, e.g. after a simulator restart, starts with ``new_session``)."""
        q = np.asarray(descriptor, np.float32)
        if q.ndim == 2 and q.shape[0] == 1:
            q = q[0]
        if q.ndim != 1 or q.shape[0] != self.db.descriptor_dim:
            raise MapError(f'descriptor must be [{self.db.descriptor_dim}] (one frame), got {tuple(np.shape(descriptor))}')
        norm = float(np.linalg.norm(q))
        if not math.isfinite(norm) or norm < 1e-12:
            raise MapError('descriptor is zero or not finite; check the encoder output')
        q = q / norm
        stamp_ns = int(stamp_ns)
        with self._lock:
            c = self.config
            if self._last_stamp_ns is not None and stamp_ns < self._last_stamp_ns:
                raise MapError(f'stamp {stamp_ns / NS_PER_S:.9f} s is before the previous frame\'s '
                               f'({self._last_stamp_ns / NS_PER_S:.9f} s) within one session; start a new session '
                               '(restart the node, or clear the map) after a time jump')
            self._last_stamp_ns = stamp_ns
            slam = c.mode == 'slam'
            adding = slam and self.mapping
            if slam:
                decision = self.selector.check(q, stamp_ns, position)
                if not decision.accept:
                    self.outcome_counts['not_keyframe'] += 1
                    return FrameResult(None, [], math.nan, None, decision.reason, 'not_keyframe')
            result = self._query(q, stamp_ns, image)
            assert result.outcome in OUTCOMES, result.outcome
            self.outcome_counts[result.outcome] += 1
            if adding:
                kf = Keyframe(-1, stamp_ns, _tuple(position, 3), _tuple(orientation, 4), frame_id, source, c.session)
                thumb = [image] if (self.store_thumbnails and image is not None) else None
                (kid,) = self.db.add(q, [kf], thumbnails=thumb)
                self._session_ids.append(int(kid))
                self._session_stamps.append(stamp_ns)
                result.keyframe_id = kid
                for cand in ([result.best] if result.best else []) + result.candidates:
                    cand.query_id = kid
            if slam:
                self.selector.accept(q, stamp_ns, position)
            self._recent.append(q)
            self._last_query_ns = stamp_ns
            return result

    def _query(self, q: np.ndarray, stamp_ns: int, image: np.ndarray | None) -> FrameResult:
        c = self.config
        id_below = self.search_limit(stamp_ns) if c.mode == 'slam' else None
        if len(self.db) == 0:
            self._chains = []
            return FrameResult(None, [], math.nan, None, 'map empty', 'no_eligible_keyframe')
        k = max(c.top_k, c.calibration_k) if c.calibrated else c.top_k
        all_scores, all_ids = self.db.search(q, k, id_below=id_below)
        valid = all_ids[0] >= 0
        if not valid.any():
            self._chains = []
            return FrameResult(None, [], math.nan, None, 'exclusion window: no keyframe old enough',
                               'no_eligible_keyframe')
        all_scores, all_ids = all_scores[0][valid], all_ids[0][valid]
        scores, ids = all_scores[:c.top_k], all_ids[:c.top_k]
        best = self._candidate(None, stamp_ns, ids[0], scores[0], 0)
        reference = self._reference_score(q) if c.relative_score > 0 else None
        decision = float(scores[0]) / reference if reference and reference > 0 else float(scores[0])

        def rejected(outcome: str, why: str) -> FrameResult:
            self._chains = []
            return FrameResult(None, [], decision, best, why, outcome)

        # calibrated threshold: the decision score becomes -log10(false-alarm probability)
        if c.calibrated:
            sig = significance(all_scores, all_ids, c.calibration_radius, c.calibration_min_samples)
            if sig is None:
                return rejected('undecided', f'calibration: fewer than {c.calibration_min_samples} background '
                                             f'places among the {all_ids.size} eligible keyframes retrieved')
            decision = sig.log10_p
            if sig.p_value > c.false_alarm_rate:
                return rejected('below_calibrated', f'not significant (false-alarm probability {sig.p_value:.2g} > '
                                                    f'false_alarm_rate {c.false_alarm_rate:g})')
        # absolute and relative thresholds
        if scores[0] < c.min_score:
            return rejected('below_min_score', f'below min_score ({scores[0]:.3f} < {c.min_score})')
        keep = scores >= c.min_score
        reason = ''
        if c.relative_score > 0:
            if reference is None or reference <= 0:
                return rejected('undecided', 'relative_score: no recent frame to compare with yet')
            keep &= scores / reference >= c.relative_score
            if not keep.any():
                return rejected('below_relative_score', f'below relative_score ({float(scores[0]) / reference:.3f} < '
                                                        f'{c.relative_score})')
        survivors = [(int(i), float(s), r) for r, (i, s) in enumerate(zip(ids, scores)) if keep[r]]
        # non-maximum suppression: drop candidates next to a better one
        if c.nms_radius > 0:
            kept: list[tuple[int, float, int]] = []
            for cand in survivors:
                if all(abs(cand[0] - k[0]) > c.nms_radius for k in kept):
                    kept.append(cand)
            survivors = kept
        # temporal consistency over consecutive queries (one chain per surviving candidate)
        gap_ok = (self._last_query_ns is None or c.consistency_max_gap_s <= 0 or
                  (stamp_ns - self._last_query_ns) * 1e-9 <= c.consistency_max_gap_s)
        previous = self._chains if gap_ok else []
        chains = []
        for mid, _, _ in survivors:
            length = 1 + max((ch.length for ch in previous if abs(ch.match_id - mid) <= c.consistency_tolerance),
                             default=0)
            chains.append(_Chain(mid, length))
        self._chains = chains
        if survivors and c.temporal_consistency > 1:
            consistent = [s for s, ch in zip(survivors, chains) if ch.length >= c.temporal_consistency]
            if not consistent:
                longest = max(ch.length for ch in chains)
                return FrameResult(None, [], decision, best, f'temporal consistency ({longest}/{c.temporal_consistency})',
                                   'not_consistent')
            survivors = consistent
        # geometric verification, best first, until max_candidates are accepted
        accepted: list[LoopCandidate] = []
        for rank, (mid, score, _) in enumerate(survivors):
            cand = self._candidate(None, stamp_ns, mid, score, len(accepted))
            if self.verifier is not None:
                ok, inliers, why = self._verify(image, mid)
                cand.verified, cand.inliers = ok, inliers
                if not ok:
                    reason = f'geometric verification: {why}'
                    continue
            accepted.append(cand)
            if len(accepted) >= c.max_candidates:
                break
        if not accepted:
            return FrameResult(None, [], decision, best, reason, 'failed_geometric')
        return FrameResult(None, accepted, decision, best, '', 'accepted')

    def _verify(self, image: np.ndarray | None, match_id: int) -> tuple[bool, int, str]:
        if image is None:
            if not self._warned_no_image:
                log.warning('geometric verification is on but frames come without images; candidates are rejected')
                self._warned_no_image = True
            return False, 0, 'no query image'
        thumb = self.db.keyframe_image(match_id)
        if thumb is None:
            if not self._warned_no_thumbnail:
                log.warning('geometric verification is on but keyframe %d has no stored thumbnail (maps need them: '
                            'build-map --thumbnails, or keyframes added with verification on); such candidates '
                            'are rejected', match_id)
                self._warned_no_thumbnail = True
            return False, 0, f'keyframe {match_id} has no stored thumbnail'
        # The query goes through the same thumbnail step as the stored keyframe (same scale).
        v = self.verifier.verify(self.db.query_image(image), thumb)
        return v.verified, v.inliers, v.reason


def _tuple(value, n: int):
    if value is None:
        return None
    t = tuple(float(v) for v in np.asarray(value, np.float64).ravel())
    if len(t) != n:
        raise MapError(f'expected {n} values, got {len(t)}: {value!r}')
    return t
