"""The loop-closure detector: a descriptor stream in, accepted loop candidates out.

Two modes. ``slam``: each new keyframe queries the keyframes outside an exclusion window (recent
keyframes of the running session, by time and/or count), then joins the map. ``localization``:
every frame queries a prebuilt map, which is never modified.

The running session is an identity, not a label: the keyframes this detector added since it was
attached to the map (or since ``new_session``), i.e. an id range. Keyframes that were already in the
map (a loaded map, earlier sessions, whatever their label or stamps) are never inside the exclusion
window, and a match into them is a *relocalization*, not a loop (``KINDS``).

The stages, one module each, run per frame in the order of ``OUTCOMES``: keyframe selection
(``keyframes``) -> top-k search outside the exclusion window -> the query's background tail
(``calibration``) -> evidence along the trajectory and its calibrated threshold (``sequence``; a
keyframe alone when ``sequence_length`` is 1) -> absolute and relative score thresholds ->
non-maximum suppression -> temporal consistency -> geometric verification (``geometric``) -> at
most ``max_candidates`` accepted candidates, best first.

Every processed frame ends with exactly one outcome: accepted, or the stage that decided against
it. The detector counts them (``outcome_counts``).
"""
from __future__ import annotations

import collections
import logging
import math
import threading
from dataclasses import dataclass, field

import numpy as np

from ..errors import MapError
from ..map import Keyframe, MapDatabase
from ..values import NS_PER_S
from .calibration import COMPLETE_MAX, significance
from .config import MODES, DetectorConfig
from .geometric import GeometricVerifier
from .keyframes import KeyframeSelector
from .sequence import FLOOR, SequenceDecision, SequenceMatcher
from .timeline import SessionTrack, Timeline

log = logging.getLogger(__name__)

__all__ = ['MODES', 'DetectorConfig', 'LoopClosureDetector', 'LoopCandidate', 'FrameResult', 'OUTCOMES',
           'KINDS', 'CANDIDATE_COLUMNS']

# The outcome of every processed frame: the stage that decided against it, in the order the
# stages run, or accepted.
OUTCOMES: dict[str, str] = {
    'not_keyframe': 'slam mode: the keyframe selector did not take the frame (time, distance or novelty)',
    'no_eligible_keyframe': 'the map is empty, or every keyframe is inside the exclusion window',
    'undecided': 'no reference to decide with yet: too few background places for the calibrated '
                 'threshold, or no recent frame for the relative score',
    'accumulating': 'evidence along the trajectory is still accumulating: not significant yet, with fewer '
                    'than sequence_length keyframes since the sequence started',
    'below_calibrated': 'the best match (or sequence) is not significant at false_alarm_rate',
    'below_min_score': 'the best match is below min_score',
    'below_relative_score': 'the best match is below relative_score x the recent self-similarity',
    'not_consistent': 'temporal consistency: not yet temporal_consistency consistent queries',
    'failed_geometric': 'geometric verification rejected every candidate',
    'accepted': 'a loop closure was accepted',
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
        """Return the candidate as a row of CANDIDATE_COLUMNS (stamps in seconds)."""
        return (self.query_stamp_ns / NS_PER_S, self.match_stamp_ns / NS_PER_S, float(self.match_id),
                0.0 if self.same_session else 1.0, float(KINDS.index(self.kind)), float(self.score),
                float(self.rank), 1.0 if self.verified else 0.0, float(self.inliers))


@dataclass
class FrameResult:
    """What the detector made of one frame."""

    keyframe_id: int | None      # id if the frame joined the map as a keyframe (slam mode), else None
    candidates: list[LoopCandidate] = field(default_factory=list)  # accepted loop closures, best first
    # score the accept/reject decision was made on (for PR curves, larger = more confident):
    # -log10 of the false-alarm probability when calibrated, else the best match's cosine score
    # (divided by the reference score when relative_score > 0); nan if no match
    decision_score: float = math.nan
    # the match the decision is about, before thresholds: the best sequence hypothesis's keyframe,
    # else the best single match outside the exclusion window
    best: LoopCandidate | None = None
    reason: str = ''             # short reason when nothing was accepted
    outcome: str = ''            # a key of OUTCOMES
    sequence: SequenceDecision | None = None   # the sequence stage's verdict, when it ran


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
        """Apply new settings (validated first).

        The map and the current session's exclusion window are kept, the filters' running state is
        reset.
        """
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
            self.sequence = SequenceMatcher(self.db, Timeline(self.db, self._session_view), config.sequence_length,
                                            config.sequence_seeds, config.speeds, config.sequence_max_gap_s,
                                            config.calibration_radius, config.calibration_min_samples,
                                            config.sequence_alignment)
            self.store_thumbnails = (config.geometric_verification if config.store_thumbnails is None
                                     else config.store_thumbnails)
            self.reset()

    def reset(self) -> None:
        """Forget the running state of the filters (the map is kept).

        That is the evidence along the trajectory and the temporal-consistency, relative-score and
        keyframe-selection state.
        """
        with self._lock:
            self.sequence.reset()
            self._chains: list[_Chain] = []
            self._last_query_ns: int | None = None
            self._recent: collections.deque[np.ndarray] = collections.deque(maxlen=self.config.relative_window)
            self.selector.reset()

    def new_session(self) -> None:
        """Start a new session.

        Keyframes already in the map become an earlier session (never inside the exclusion window;
        matches into them are relocalizations). Called on attaching to a map and after the map was
        cleared.
        """
        with self._lock:
            self._session_start = self.db.next_id
            # keyframes this session added, in id order, their stamps (non-decreasing within a
            # session) and the distance travelled to each (from its odometry); 32 bytes a keyframe
            self._track = SessionTrack()
            self._last_stamp_ns: int | None = None
            if hasattr(self, 'config'):
                self.reset()

    def _session_view(self) -> tuple[int, SessionTrack]:
        return self._session_start, self._track

    def eligible_count(self, id_below: int | None) -> int:
        """Count the keyframes a query may match.

        That is the map, less the running session's keyframes at or above ``id_below`` (the exclusion
        window).
        """
        n = len(self.db)
        if id_below is None:
            return n
        return n - (self._track.size - int(np.searchsorted(self._track.ids, id_below)))

    @property
    def session_start(self) -> int:
        """The first keyframe id of the running session."""
        return self._session_start

    @property
    def session_keyframes(self) -> int:
        """Keyframes the running session added to the map."""
        return self._track.size

    # ------------------------------------------------------------------ helpers
    def search_limit(self, stamp_ns: int) -> int:
        """Return the bound below which the ids of a query's matches must lie.

        Matches of a query at ``stamp_ns`` must have ids below this (slam mode: the exclusion window
        of the running session). The window covers only this session's own keyframes (its id range),
        whatever the labels and stamps of the keyframes that were in the map before it.
        """
        c = self.config
        next_id = self.db.next_id
        cut = next_id
        track = self._track
        n = track.size
        if not n:
            return cut
        ids = track.ids
        if c.exclusion_frames > 0:
            cut = min(cut, int(ids[max(0, n - c.exclusion_frames)]))
        if c.exclusion_time_s > 0:
            first = int(np.searchsorted(track.stamps, stamp_ns - int(round(c.exclusion_time_s * NS_PER_S))))
            if first < n:
                cut = min(cut, int(ids[first]))
        return cut

    def kind_of(self, match_id: int) -> str:
        """``loop`` for a keyframe of the running slam session, else ``relocalization``."""
        return 'loop' if self.config.mode == 'slam' and match_id >= self._session_start else 'relocalization'

    def _reference_score(self, q: np.ndarray) -> float | None:
        if not self._recent:
            return None
        return float(max(float(np.dot(q, r)) for r in self._recent))

    @staticmethod
    def _background(scores: np.ndarray, ids: np.ndarray, eligible: int, sig) -> tuple[float, float, float]:
        """Return (level, scale, neutral): a query's background in the sequence stage.

        ``level`` and ``scale`` are what a query's similarities are measured against in the sequence
        stage, ``neutral`` the evidence an unrelated keyframe gives on average. A complete search (a small
        map) gives the mean and spread of every eligible keyframe; otherwise the background tail's
        threshold and scale (``sig``), below which nearly every keyframe lies (evidence at the floor).
        """
        if ids.size >= eligible:
            rest = scores[1:]
            level, scale = float(rest.mean()), max(float(rest.std(ddof=1)), 1e-6)
            return level, scale, float(np.mean(np.maximum((rest - level) / scale, FLOOR)))
        return sig.threshold, sig.beta, FLOOR

    def _candidate(self, query_id, stamp_ns, match_id, score, rank) -> LoopCandidate:
        kf = self.db.keyframe(int(match_id))
        return LoopCandidate(query_id, int(stamp_ns), int(match_id), kf.stamp_ns, float(score), rank, False, 0, kf,
                             self.kind_of(int(match_id)))

    # ------------------------------------------------------------------ main entry
    def process(self, descriptor: np.ndarray, stamp_ns: int, position=None, orientation=None, frame_id: str = '',
                image: np.ndarray | None = None, source: str = '') -> FrameResult:
        """Process one frame: query the map, filter, and add the frame to the map.

        The frame is added in slam mode with ``mapping`` on, keyframes only. With ``mapping`` off, slam
        mode queries the same frames (the keyframe selector still decides which frames are queried, so
        every filter keeps its meaning in keyframes) and adds nothing. A stamp before the previous
        frame's of the same session is a ``MapError`` (a new session, e.g. after a simulator restart,
        starts with ``new_session``).
        """
        q = np.asarray(descriptor, np.float32)
        if q.ndim == 2 and q.shape[0] == 1:
            q = q[0]
        if q.ndim != 1 or q.shape[0] != self.db.descriptor_dim:
            raise MapError(f'descriptor must be [{self.db.descriptor_dim}] (one frame), '
                           f'got {tuple(np.shape(descriptor))}')
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
            result = self._query(q, stamp_ns, image, position)
            assert result.outcome in OUTCOMES, result.outcome
            self.outcome_counts[result.outcome] += 1
            if adding:
                kf = Keyframe(-1, stamp_ns, _tuple(position, 3), _tuple(orientation, 4), frame_id, source, c.session)
                thumb = [image] if (self.store_thumbnails and image is not None) else None
                (kid,) = self.db.add(q, [kf], thumbnails=thumb)
                self._track.append(int(kid), stamp_ns, kf.position)
                result.keyframe_id = kid
                for cand in ([result.best] if result.best else []) + result.candidates:
                    cand.query_id = kid
            if slam:
                self.selector.accept(q, stamp_ns, position)
            self._recent.append(q)
            self._last_query_ns = stamp_ns
            return result

    def _query(self, q: np.ndarray, stamp_ns: int, image: np.ndarray | None, position=None) -> FrameResult:
        """Run the stages after keyframe selection, in the order of OUTCOMES."""
        c = self.config
        id_below = self.search_limit(stamp_ns) if c.mode == 'slam' else None
        # search outside the exclusion window
        if len(self.db) == 0:
            self._chains = []
            return FrameResult(None, [], math.nan, None, 'map empty', 'no_eligible_keyframe')
        k = c.top_k
        if c.calibrated:
            # a small map is searched completely: its whole background is known (COMPLETE_MAX)
            eligible = self.eligible_count(id_below)
            k = max(k, c.calibration_k, eligible if eligible <= COMPLETE_MAX else 0)
        all_scores, all_ids = self.db.search(q, k, id_below=id_below)
        valid = all_ids[0] >= 0
        if not valid.any():
            self._chains = []
            return FrameResult(None, [], math.nan, None, 'exclusion window: no keyframe old enough',
                               'no_eligible_keyframe')
        all_scores, all_ids = all_scores[0][valid], all_ids[0][valid]
        # the single best match, read from the map when the result shows it (the sequence stage puts
        # its own in its place)
        def single_best() -> LoopCandidate:
            return self._candidate(None, stamp_ns, all_ids[0], all_scores[0], 0)

        best = None if c.calibrated and c.sequences else single_best()
        reference = self._reference_score(q) if c.relative_score > 0 else None
        decision = float(all_scores[0]) / reference if reference and reference > 0 else float(all_scores[0])
        # ranked (id, cosine of this query) to filter further, best first
        ranked = [(int(i), float(s)) for i, s in zip(all_ids[:c.top_k], all_scores[:c.top_k])]
        sequence = None

        def rejected(outcome: str, why: str) -> FrameResult:
            self._chains = []
            return FrameResult(None, [], decision, best if best is not None else single_best(), why, outcome,
                               sequence)

        if c.calibrated:
            # the query's background (undecided without one), then the calibrated decision
            sig = significance(all_scores, all_ids, c.calibration_radius, c.calibration_min_samples, eligible)
            if sig is None:
                return rejected('undecided', f'calibration: fewer than {c.calibration_min_samples} background '
                                             f'places among the {all_ids.size} eligible keyframes retrieved')
            if c.sequences:
                level, scale, neutral = self._background(all_scores, all_ids, eligible, sig)
                self.sequence.add_query(q, stamp_ns, level, scale, neutral, id_below, all_ids, all_scores,
                                        complete=all_ids.size >= eligible, position=position, single_p=sig.p_value)
                sequence = self.sequence.decide(eligible, id_below, c.false_alarm_rate)
                if sequence is None:
                    return rejected('undecided', 'sequence: too few competing places to judge the best hypothesis')
                best = self._candidate(None, stamp_ns, sequence.anchor, sequence.cosine, 0)
                decision = -math.log10(max(sequence.p_value, 1e-300))
                if sequence.p_value > c.false_alarm_rate:
                    outcome = 'accumulating' if sequence.length < c.sequence_length else 'below_calibrated'
                    return rejected(outcome, f'sequence of {sequence.length} keyframes not significant (false-alarm '
                                             f'probability {sequence.p_value:.2g} > false_alarm_rate '
                                             f'{c.false_alarm_rate:g})')
                ranked = [(a, cos) for a, _, p, cos in sequence.ranked if p <= c.false_alarm_rate][:c.top_k]
            else:
                decision = sig.log10_p
                if sig.p_value > c.false_alarm_rate:
                    return rejected('below_calibrated', f'not significant (false-alarm probability {sig.p_value:.2g} > '
                                                        f'false_alarm_rate {c.false_alarm_rate:g})')
        # absolute and relative thresholds (on this query's cosine with the matched keyframe)
        if ranked[0][1] < c.min_score:
            return rejected('below_min_score', f'below min_score ({ranked[0][1]:.3f} < {c.min_score})')
        survivors = [(i, s) for i, s in ranked if s >= c.min_score]
        if c.relative_score > 0:
            if reference is None or reference <= 0:
                return rejected('undecided', 'relative_score: no recent frame to compare with yet')
            survivors = [(i, s) for i, s in survivors if s / reference >= c.relative_score]
            if not survivors:
                return rejected('below_relative_score', f'below relative_score ({ranked[0][1] / reference:.3f} < '
                                                        f'{c.relative_score})')
        # non-maximum suppression: drop candidates next to a better one
        if c.nms_radius > 0:
            kept: list[tuple[int, float]] = []
            for cand in survivors:
                if all(abs(cand[0] - k[0]) > c.nms_radius for k in kept):
                    kept.append(cand)
            survivors = kept
        # temporal consistency over consecutive queries (one chain per surviving candidate)
        gap_ok = (self._last_query_ns is None or c.consistency_max_gap_s <= 0 or
                  (stamp_ns - self._last_query_ns) * 1e-9 <= c.consistency_max_gap_s)
        previous = self._chains if gap_ok else []
        chains = []
        for mid, _ in survivors:
            length = 1 + max((ch.length for ch in previous
                              if abs(ch.match_id - mid) <= c.consistency_tolerance), default=0)
            chains.append(_Chain(mid, length))
        self._chains = chains
        if survivors and c.temporal_consistency > 1:
            consistent = [s for s, ch in zip(survivors, chains) if ch.length >= c.temporal_consistency]
            if not consistent:
                longest = max(ch.length for ch in chains)
                return FrameResult(None, [], decision, best,
                                   f'temporal consistency ({longest}/{c.temporal_consistency})',
                                   'not_consistent', sequence)
            survivors = consistent
        # geometric verification, best first, until max_candidates are accepted
        accepted: list[LoopCandidate] = []
        reason = ''
        for mid, score in survivors:
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
            return FrameResult(None, [], decision, best, reason, 'failed_geometric', sequence)
        return FrameResult(None, accepted, decision, best, '', 'accepted', sequence)

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
