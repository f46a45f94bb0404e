"""Evidence along the trajectory: the recent query keyframes matched against stretches of the map.

A robot moves along a path, so a revisit is not one frame that looks like a map keyframe but a
run of frames that look like a run of map keyframes, in order and at a plausible speed. Single
frames of a weak model rarely rank their true match first (across seasons, one keyframe in four);
along a sequence of tens of keyframes the true stretch stands far out of the rest. The method is
our own; it follows the ideas of SeqSLAM (sequences of local matches, time-aligned, with a range
of speeds), Seq-CALC and online sequence matching (hypotheses proposed by the retrieval and
followed along the map), and keeps the decision calibrated like the single-frame stage.

Per query keyframe ``q`` (stamp ``t_q``), with the recent query keyframes ``j`` of the running
sequence (stamps ``t_j``, at most ``length`` of them):

1. **Per-query normalization.** Each query's similarities are measured against its own
   background tail (``u_j``, ``beta_j``: the lowest peak and the exponential scale of its retrieved
   background, ``boq_vpr.detection.calibration``), so a dark frame that is alike everywhere adds
   little, and scores of every model and environment are on one scale: the evidence of map keyframe
   ``m`` for query ``j`` is ``e_j(m) = (cos(q_j, m) - u_j) / beta_j``, clipped below at ``FLOOR``.
2. **Hypotheses.** The best matches of the last ``seeds`` queries, each carried forward along its
   own map session by the time since that query, propose anchors ``a``: "the query is now at map
   keyframe ``a``".
3. **Sequences aligned by time, or by travelled distance.** For anchor ``a`` and relative speed
   ``v`` (``speeds``: the map driven faster or slower), query ``j`` is aligned with the map keyframe
   of ``a``'s session nearest to ``stamp(a) - v (t_q - t_j)``. Where every recent query and the map
   session's keyframes have odometry positions (``alignment`` 'auto'), the same holds with the
   distance travelled along the session in place of the stamp: a pass at another speed, or with
   stops, lines up with the map all the same. A sequence follows one session of the map (never
   across a session boundary), takes only map keyframes that were eligible for query ``j`` (outside
   its exclusion window), and a query with no map keyframe near its aligned position (missed
   keyframes, the start of the map) counts what an unrelated keyframe gives on average (no evidence
   either way). The hypothesis score is the sum of its evidence, the best over the speeds.
4. **Decision.** The best anchor's score is judged against the scores of the competing anchors with
   the same extreme-value tail test as single frames (one peak per place, the best place set aside,
   the tail capped on small maps): the probability that a query whose trajectory revisits nothing
   would produce a sequence standing out that far. Evidence accumulates: an unmistakable match
   stands out after a few keyframes, a weak one only after a long consistent stretch.

Cost: no descriptor is compared again. The evidence of a query comes from its own search (the
keyframes it retrieved and their cosines); a keyframe it did not retrieve scored below the last one
it did, and counts that bound, the same for every hypothesis. Only the few keyframes reported are
read back from the map's stored descriptors (their cosine with the newest query). Map stamps and
positions are read from the map's metadata in small blocks, cached.
"""
from __future__ import annotations

import array
import collections
import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..map import MapDatabase
from .calibration import judge, place_peaks

log = logging.getLogger(__name__)

# Evidence of one query keyframe is clipped below at this (units of its background scale): one
# occluded or missed frame costs a bounded amount, a stretch that does not match costs a lot.
FLOOR = -2.0
# Best matches of each recent query that propose hypotheses.
SEEDS_PER_QUERY = 50
# The matched keyframe is the anchor or a neighbour this many ids away, whichever the query is most like.
REFINE = 1
# Aligned keyframes a hypothesis needs before it competes.
MIN_TERMS = 3


@dataclass
class QueryRecord:
    """One query keyframe of the running sequence."""

    seq: int                  # running number of the query
    stamp_ns: int
    descriptor: np.ndarray    # [D], L2-normalized
    u: float                  # its background level: the tail threshold (the mean in a small map)
    beta: float               # its background scale: the tail scale (the spread in a small map)
    neutral: float            # the evidence a keyframe unrelated to it gives on average
    id_below: int | None      # map keyframes it could match have ids below this (None: any)
    seeds: np.ndarray         # its best matches' keyframe ids (best first)
    seed_scores: np.ndarray   # and their cosines
    complete: bool = False    # its search returned every keyframe it could match (a small map)
    distance: float = math.nan   # travelled distance since the sequence started (m; NaN: no odometry)

    def __post_init__(self) -> None:
        order = np.argsort(self.seeds, kind='stable')
        self._ids = self.seeds[order]
        self._scores = self.seed_scores[order].astype(np.float64)
        # a keyframe its search did not return scored below the last one it did: at most this
        # evidence (an upper bound shared by every hypothesis; nearly always the floor)
        last = float(self.seed_scores[-1]) if self.seed_scores.size else self.u
        self._missed = max(min((last - self.u) / self.beta, 0.0), FLOOR)

    def evidence(self, m: np.ndarray) -> np.ndarray:
        """Return the evidence of map keyframes ``m`` (-1: none aligned) for this query, from its own search."""
        if self._ids.size == 0:
            return np.full(m.shape, self.neutral)
        k = np.minimum(np.searchsorted(self._ids, m), self._ids.size - 1)
        hit = self._ids[k] == m
        e = np.where(hit, np.maximum((self._scores[k] - self.u) / self.beta, FLOOR),
                     self.neutral if self.complete else self._missed)
        return np.where(m >= 0, e, self.neutral)

    def cosines(self, m: np.ndarray) -> np.ndarray:
        """Cosines of map keyframes ``m`` with this query where its search returned them, else NaN."""
        if self._ids.size == 0:
            return np.full(m.shape, np.nan)
        k = np.minimum(np.searchsorted(self._ids, m), self._ids.size - 1)
        return np.where(self._ids[k] == m, self._scores[k], np.nan)


@dataclass
class SequenceDecision:
    """The best hypothesis of one query and how far it stands out."""

    anchor: int               # map keyframe id the query is matched to
    score: float              # the hypothesis's summed evidence
    p_value: float            # false-alarm probability of a sequence standing out that far
    length: int               # query keyframes in the sequence
    speed: float              # the relative speed of the best alignment
    samples: int              # tail samples of the competing anchors
    cosine: float             # the newest query's cosine similarity with the anchor
    aligned: tuple[int, ...]  # the map keyframes the best hypothesis aligned with the recent queries
    ranked: list[tuple[int, float, float, float]]   # (anchor, score, p, cosine) per place, best first


class _Table:
    """Keyframes of one or more map sessions in id order, with a key ordering them by (session, position).

    A keyframe's position along its session (``coord``) is its stamp (ns), or with odometry the
    distance travelled since the session's start (``by_distance``, mm); it never goes back within a
    session. The key puts the keyframe of a session nearest to a position one ``searchsorted`` away.
    """

    SPAN = 1 << 50     # of one session in the key: 13 days in ns, 10^9 m in mm (longer ones are clipped at the end)

    def __init__(self, ids: np.ndarray, coord: np.ndarray, segment: np.ndarray, by_distance: bool = False) -> None:
        self.ids = ids
        self.coord = coord
        self.by_distance = by_distance
        self.segment = segment                      # session index of each row, non-decreasing
        starts = np.r_[0, np.flatnonzero(np.diff(segment)) + 1] if ids.size else np.zeros(0, np.int64)
        self.first = np.repeat(coord[starts], np.diff(np.r_[starts, ids.size])) if ids.size else coord
        self.key = segment * self.SPAN + np.minimum(coord - self.first, self.SPAN - 1)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id (-1 when absent)."""
        k = np.minimum(np.searchsorted(self.ids, ids), max(self.ids.size - 1, 0))
        return np.where(self.ids.size and (self.ids[k] == ids), k, -1) if self.ids.size else np.full(ids.shape, -1)

    def nearest(self, rows: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Return the row of the keyframe of each anchor's session nearest to each target.

        The anchors are at ``rows`` (shape [A]), the target positions are ``targets`` ([A, ...]).
        """
        shape = (-1,) + (1,) * (targets.ndim - 1)
        seg = self.segment[rows].reshape(shape)
        first = self.first[rows].reshape(shape)
        key = seg * self.SPAN + np.clip(targets - first, 0, self.SPAN - 1)
        k = np.clip(np.searchsorted(self.key, key), 0, self.ids.size - 1)
        prev = np.maximum(k - 1, 0)
        k = np.where(self.segment[k] != seg, prev, k)
        prev = np.where(self.segment[prev] != seg, k, prev)
        return np.where(np.abs(self.coord[prev] - targets) <= np.abs(self.coord[k] - targets), prev, k)


def travelled_mm(positions: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Return the distance travelled from the start of each row's session, in mm (int64).

    ``positions`` ``[n, 3]`` (all known), ``segment`` the session index of each row (non-decreasing):
    the sum of the straight steps between consecutive keyframes of the session.
    """
    step = np.zeros(len(positions))
    if len(positions) > 1:
        step[1:] = np.linalg.norm(np.diff(positions, axis=0), axis=1)
        step[1:][np.diff(segment) != 0] = 0.0
    total = np.cumsum(step)
    starts = np.r_[0, np.flatnonzero(np.diff(segment)) + 1] if len(step) else np.zeros(0, np.int64)
    total -= np.repeat(total[starts], np.diff(np.r_[starts, len(step)])) if len(step) else 0.0
    return np.round(total * 1000.0).astype(np.int64)


class Timeline:
    """Stamps, positions and sessions of map keyframes by id, for following a session of the map.

    A session is followed in time, or in travelled distance where every keyframe has a position.

    Keyframes of the running session come from the detector's own arrays; earlier keyframes (a
    loaded map, earlier sessions) are read from the map's metadata in blocks of ``BLOCK`` ids around
    the keyframes asked for, and cached, so nothing proportional to the map is held in memory.
    Among earlier keyframes a session is a run of consecutive ids with one session label and stamps
    that never go back; the running session is its own id range.
    """

    BLOCK = 64
    MAX_BLOCKS = 4096

    def __init__(self, db: MapDatabase,
                 session: Callable[[], tuple[int, array.array, array.array, array.array]]) -> None:
        self.db = db
        # () -> (session_start, session_ids, session_stamps, session_distances: m travelled, NaN unknown)
        self._session = session
        self._blocks: collections.OrderedDict[int, tuple[np.ndarray, ...]] = collections.OrderedDict()

    def clear(self) -> None:
        self._blocks.clear()

    def _block(self, b: int) -> tuple[np.ndarray, ...]:
        blk = self._blocks.get(b)
        if blk is None:
            blk = self.db.keyframe_stamps(b * self.BLOCK, (b + 1) * self.BLOCK)
            self._blocks[b] = blk
            while len(self._blocks) > self.MAX_BLOCKS:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(b)
        return blk

    def tables(self, ids: np.ndarray, by_distance: bool = False) -> list[tuple[_Table, np.ndarray]]:
        """Return (table, mask of ``ids`` it holds) pairs.

        The tables are the running session, and the earlier keyframes in the blocks around those
        ``ids`` that are earlier. ``by_distance``: a table whose keyframes all have positions is
        ordered by travelled distance, any other by stamps.
        """
        start, sids, sstamps, sdist = self._session()
        out = []
        running = ids >= start
        if running.any() and len(sids):
            t_ids = np.frombuffer(sids, np.int64).copy()
            dist = np.frombuffer(sdist, np.float64) if by_distance else None
            if dist is not None and dist.size == t_ids.size and np.isfinite(dist).all():
                table = _Table(t_ids, np.round(dist * 1000.0).astype(np.int64), np.zeros(t_ids.size, np.int64), True)
            else:
                table = _Table(t_ids, np.frombuffer(sstamps, np.int64).copy(), np.zeros(t_ids.size, np.int64))
            out.append((table, running))
        earlier = ~running
        if earlier.any():
            blocks = np.unique(ids[earlier] // self.BLOCK)
            wanted = np.unique(np.concatenate([blocks - 1, blocks, blocks + 1]))
            wanted = wanted[(wanted >= 0) & (wanted * self.BLOCK < start)]
            parts = [self._block(int(b)) for b in wanted]
            e_ids = np.concatenate([p[0] for p in parts])
            e_st = np.concatenate([p[1] for p in parts])
            labels = np.concatenate([p[2] for p in parts])
            keep = e_ids < start
            e_ids, e_st, labels = e_ids[keep], e_st[keep], labels[keep]
            if e_ids.size:
                brk = np.zeros(e_ids.size, bool)
                brk[1:] = (np.diff(e_ids) > 1) & (np.diff(e_ids // self.BLOCK) > 0)  # blocks not read
                brk[1:] |= labels[1:] != labels[:-1]
                brk[1:] |= np.diff(e_st) < 0
                segment = np.cumsum(brk)
                pos = np.concatenate([p[3] for p in parts])[keep] if by_distance else None
                if pos is not None and np.isfinite(pos).all():
                    out.append((_Table(e_ids, travelled_mm(pos, segment), segment, True), earlier))
                else:
                    out.append((_Table(e_ids, e_st, segment), earlier))
        return out


class SequenceMatcher:
    """The sequence stage of the detector (see the module docstring).

    Not thread-safe: the detector serializes calls.
    """

    def __init__(self, db: MapDatabase, timeline: Timeline, length: int, seeds: int,
                 speeds: tuple[float, ...], max_gap_s: float, radius: int, min_samples: int,
                 alignment: str = 'auto') -> None:
        self.db = db
        self.timeline = timeline
        self.length = int(length)
        self.seeds = int(seeds)
        self.speeds = np.asarray(speeds, np.float64)
        self.max_gap_ns = int(round(max_gap_s * 1e9))
        self.radius = int(radius)
        self.min_samples = int(min_samples)
        self.by_distance = alignment == 'auto'     # align by travelled distance where odometry is given
        self.queries: collections.deque[QueryRecord] = collections.deque(maxlen=self.length)
        self._seq = 0
        self._odometry: tuple[np.ndarray, float] | None = None   # last known position, distance at it

    def reset(self) -> None:
        """Forget the running sequence (a time jump, a new session, new settings)."""
        self.queries.clear()
        self._odometry = None
        self.timeline.clear()

    def _travelled(self, position) -> float:
        """Return the distance travelled since the sequence started (m), NaN without a position.

        A query without a position is skipped: the next one continues from the last known position.
        """
        if position is None:
            return math.nan
        p = np.asarray(position, np.float64).ravel()[:3]
        if p.size != 3 or not np.isfinite(p).all():
            return math.nan
        d = 0.0 if self._odometry is None else self._odometry[1] + float(np.linalg.norm(p - self._odometry[0]))
        self._odometry = (p, d)
        return d

    def add_query(self, descriptor: np.ndarray, stamp_ns: int, u: float, beta: float, neutral: float,
                  id_below: int | None, seeds: np.ndarray, seed_scores: np.ndarray, complete: bool = False,
                  position=None) -> None:
        """Append a query keyframe (``position``: its odometry position, when given).

        A gap longer than ``max_gap_s`` since the previous one starts a new sequence (the evidence
        before a time jump says nothing about where the robot is now).
        """
        if self.queries and stamp_ns - self.queries[-1].stamp_ns > self.max_gap_ns:
            self.queries.clear()
            self._odometry = None
        self.queries.append(QueryRecord(self._seq, int(stamp_ns), descriptor, float(u), max(float(beta), 1e-9),
                                        float(neutral),
                                        id_below, np.asarray(seeds, np.int64), np.asarray(seed_scores, np.float32),
                                        complete, self._travelled(position)))
        self._seq += 1

    def _offsets(self, queries: list[QueryRecord], by_distance: bool) -> tuple[np.ndarray, float]:
        """Return how far back along the trajectory each query is from the newest, and the usual step.

        In ns, or in mm of travelled distance. The step is the median spacing of the queries (in
        distance, of those that moved: a stop adds keyframes at one place).
        """
        if by_distance:
            d = np.array([q.distance for q in queries], np.float64) * 1000.0
            steps = np.diff(d)
            steps = steps[steps > 0]
            return np.round(d[-1] - d).astype(np.int64), float(np.median(steps)) if steps.size else 1000.0
        st = np.array([q.stamp_ns for q in queries], np.int64)
        return st[-1] - st, float(np.median(np.diff(st.astype(np.float64)))) if st.size > 1 else 1e9

    def decide(self, eligible: int, id_below: int | None) -> SequenceDecision | None:
        """Return the best hypothesis for the newest query and its false-alarm probability.

        None when there are too few competing places to judge it.
        """
        queries = list(self.queries)
        L = len(queries)
        limits = np.array([np.iinfo(np.int64).max if r.id_below is None else r.id_below for r in queries], np.int64)
        # how far back each query is (ns, or mm travelled where every query has odometry) and the
        # usual step between queries
        offsets = {False: self._offsets(queries, False)}
        if self.by_distance and all(math.isfinite(r.distance) for r in queries):
            offsets[True] = self._offsets(queries, True)
        # seeds of the recent queries, each with the time (distance) since its query
        # (all of the newest query's matches: in a small map, searched completely, every place)
        recent = queries[-self.seeds:]
        top = [r.seeds[:SEEDS_PER_QUERY] for r in recent[:-1]] + [recent[-1].seeds]
        seeds = np.concatenate(top)
        seed_query = np.concatenate([np.full(t.size, L - len(recent) + n, np.int64) for n, t in enumerate(top)])
        limit_now = limits[-1]
        anchors_all, tables_all, rows_all, segments_all = [], [], [], []
        for table, held in self.timeline.tables(seeds, True in offsets):
            dts, spacing = offsets[table.by_distance]
            rows = table.rows(seeds[held])
            ok = rows >= 0
            rows, dt = rows[ok], dts[seed_query[held][ok]]
            target = table.coord[rows] + dt
            a = table.nearest(rows, target)                                    # carried forward
            # carried past the end of its session, a hypothesis has nowhere to go
            ok = (np.abs(table.coord[a] - target) <= spacing) & (table.ids[a] < limit_now)
            a = np.unique(a[ok])
            anchors_all.append(table.ids[a])
            segments_all.append(table.segment[a] + (len(segments_all) << 32))
            tables_all.append(table)
            rows_all.append(a)
        if not anchors_all or sum(x.size for x in anchors_all) == 0:
            return None
        # for each anchor and speed, the map keyframe aligned with each recent query
        aligned_parts = []
        for table, a in zip(tables_all, rows_all):
            dts, spacing = offsets[table.by_distance]
            tol = int(2.0 * spacing)         # alignment tolerance: a missed keyframe on either side
            target = table.coord[a][:, None, None] - (self.speeds[None, :, None] * dts[None, None, :]).astype(np.int64)
            k = table.nearest(a, target)                                        # [A, V, L]
            m = table.ids[k]
            ok = (np.abs(table.coord[k] - target) <= tol) & (m < limits[None, None, :])
            aligned_parts.append(np.where(ok, m, -1))
        ids = np.concatenate(anchors_all)
        segment = np.concatenate(segments_all)          # one number per map session
        aligned = np.concatenate(aligned_parts)
        valid = aligned >= 0
        e = np.empty(aligned.shape, np.float64)
        for j, r in enumerate(queries):
            e[:, :, j] = r.evidence(aligned[:, :, j])
        totals = e.sum(axis=2)                                                           # [A, V]
        # a hypothesis needs MIN_TERMS aligned keyframes: one frame alone is not a trajectory (at the
        # start of a map every anchor would otherwise stand on its single-frame evidence)
        totals = np.where(valid.sum(axis=2) >= min(MIN_TERMS, L), totals, -np.inf)
        best_v = totals.argmax(axis=1)
        scores = totals[np.arange(ids.size), best_v]
        if not np.isfinite(scores).any():
            return None
        keep = np.isfinite(scores)
        ids, scores, best_v, segment = ids[keep], scores[keep], best_v[keep], segment[keep]
        order = np.argsort(-scores, kind='stable')
        peaks = place_peaks(ids[order], self.radius)
        background = scores[order][peaks[1:]]
        # complete: every eligible place was a seed of this query (a small map)
        complete = eligible <= queries[-1].seeds.size
        verdict = judge(float(scores[order[0]]), background, eligible, complete, self.radius, self.min_samples)
        if verdict is None:
            return None
        # the newest query's own cosine with each anchor: from its search where it retrieved the
        # anchor, else from the stored descriptors of the few anchors that are reported
        newest = queries[-1]
        cosine = newest.cosines(ids)
        wanted = [i for peak in order[peaks][:16].tolist()
                  for i in np.flatnonzero((np.abs(ids - ids[peak]) <= REFINE) & (segment == segment[peak])).tolist()]
        missing = [i for i in wanted if not np.isfinite(cosine[i])]
        if missing:
            try:
                cosine[missing] = self.db.descriptors(ids[missing]) @ newest.descriptor
            except KeyError as err:
                # keyframes removed from the map since a recent query saw them: start again from here
                log.warning('sequence: %s; the evidence along the trajectory starts again', err)
                self.reset()
                return None
        ranked = []
        for peak in order[peaks].tolist():
            i = peak
            near = np.flatnonzero((np.abs(ids - ids[peak]) <= REFINE) & (segment == segment[peak]))
            if near.size > 1 and np.isfinite(cosine[near]).any():   # the place's keyframe most like the query
                i = int(near[np.nanargmax(cosine[near])])
            p = verdict.p_value if not ranked else judge(float(scores[peak]), background, eligible, complete,
                                                         self.radius, self.min_samples).p_value
            ranked.append((int(ids[i]), float(scores[peak]), p, float(cosine[i])))
            if len(ranked) >= 16:
                break
        # the keyframe reported is the winning place's first ranked entry (the anchor or the
        # neighbour the query looks most like)
        anchor, _, _, anchor_cosine = ranked[0]
        terms = aligned[keep][order[0], best_v[order[0]]]
        return SequenceDecision(anchor, float(scores[order[0]]), verdict.p_value, L,
                                float(self.speeds[best_v[order[0]]]), verdict.samples, anchor_cosine,
                                tuple(int(m) for m in terms[terms >= 0]), ranked)


def speeds_between(lo: float, hi: float, count: int) -> tuple[float, ...]:
    """Return ``count`` relative speeds spaced evenly in log between ``lo`` and ``hi``.

    1.0 is included when the range holds it and ``count`` is odd and the range is symmetric.
    """
    if count == 1 or math.isclose(lo, hi):
        return (math.sqrt(lo * hi),)
    return tuple(float(v) for v in np.geomspace(lo, hi, count))
