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
3. **Time-aligned sequences.** For anchor ``a`` and relative speed ``v`` (``speeds``: the map driven
   faster or slower), query ``j`` is aligned with the map keyframe of ``a``'s session nearest to
   ``stamp(a) - v (t_q - t_j)``. A sequence follows one session of the map (never across a session
   boundary), takes only map keyframes that were eligible for query ``j`` (outside its exclusion
   window), and a query with no map keyframe near its aligned time (missed keyframes, a stop, the
   start of the map) counts what an unrelated keyframe gives on average (no evidence either way). The hypothesis score is the sum of its evidence, the best over
   the speeds.
4. **Decision.** The best anchor's score is judged against the scores of the competing anchors with
   the same extreme-value tail test as single frames (one peak per place, the best place set aside,
   the tail capped on small maps): the probability that a query whose trajectory revisits nothing
   would produce a sequence standing out that far. Evidence accumulates: an unmistakable match
   stands out after a few keyframes, a weak one only after a long consistent stretch.

Cost: the similarities of the recent queries with the map keyframes the hypotheses visit, from the
map's stored descriptors, cached per keyframe while its hypotheses live; independent of the map size.
"""
from __future__ import annotations

import array
import bisect
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
# Cached map keyframes (columns of similarities with the recent queries); least recently used go first.
CACHE_ROWS = 4096


@dataclass
class QueryRecord:
    """One query keyframe of the running sequence."""

    seq: int                  # running number of the query (the cache's key)
    stamp_ns: int
    descriptor: np.ndarray    # [D], L2-normalized
    u: float                  # its background tail threshold
    beta: float               # its background tail scale
    neutral: float            # the evidence a keyframe unrelated to it gives on average
    id_below: int | None      # map keyframes it could match have ids below this (None: any)
    seeds: np.ndarray         # its best matches' keyframe ids (best first)
    seed_scores: np.ndarray   # and their cosines


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
    """Keyframes of one or more map sessions in id order, with a key that orders them by (session,
    stamp), so that the keyframe of a session nearest to a stamp is one ``searchsorted`` away."""

    SPAN = 1 << 50     # ns of one session in the key (13 days; longer sessions are clipped at the end)

    def __init__(self, ids: np.ndarray, stamps: np.ndarray, segment: np.ndarray) -> None:
        self.ids = ids
        self.stamps = stamps
        self.segment = segment                      # session index of each row, non-decreasing
        starts = np.r_[0, np.flatnonzero(np.diff(segment)) + 1] if ids.size else np.zeros(0, np.int64)
        self.first = np.repeat(stamps[starts], np.diff(np.r_[starts, ids.size])) if ids.size else stamps
        self.key = segment * self.SPAN + np.minimum(stamps - self.first, self.SPAN - 1)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id (-1 when absent)."""
        k = np.minimum(np.searchsorted(self.ids, ids), max(self.ids.size - 1, 0))
        return np.where(self.ids.size and (self.ids[k] == ids), k, -1) if self.ids.size else np.full(ids.shape, -1)

    def nearest(self, rows: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """For anchors at ``rows`` (shape [A]) and stamps ``targets`` ([A, ...]), the row of the
        keyframe of each anchor's session nearest to each target."""
        shape = (-1,) + (1,) * (targets.ndim - 1)
        seg = self.segment[rows].reshape(shape)
        first = self.first[rows].reshape(shape)
        key = seg * self.SPAN + np.clip(targets - first, 0, self.SPAN - 1)
        k = np.clip(np.searchsorted(self.key, key), 0, self.ids.size - 1)
        prev = np.maximum(k - 1, 0)
        k = np.where(self.segment[k] != seg, prev, k)
        prev = np.where(self.segment[prev] != seg, k, prev)
        return np.where(np.abs(self.stamps[prev] - targets) <= np.abs(self.stamps[k] - targets), prev, k)


class Timeline:
    """Stamps and sessions of map keyframes by id, for following a session of the map in time.

    Keyframes of the running session come from the detector's own arrays; earlier keyframes (a
    loaded map, earlier sessions) are read from the map's metadata in blocks of ``BLOCK`` ids around
    the keyframes asked for, and cached, so nothing proportional to the map is held in memory.
    Among earlier keyframes a session is a run of consecutive ids with one session label and stamps
    that never go back; the running session is its own id range.
    """

    BLOCK = 256
    MAX_BLOCKS = 256

    def __init__(self, db: MapDatabase, session: Callable[[], tuple[int, array.array, array.array]]) -> None:
        self.db = db
        self._session = session        # () -> (session_start, session_ids, session_stamps)
        self._blocks: collections.OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = \
            collections.OrderedDict()

    def clear(self) -> None:
        self._blocks.clear()

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        blk = self._blocks.get(b)
        if blk is None:
            blk = self.db.keyframe_stamps(b * self.BLOCK, (b + 1) * self.BLOCK)
            self._blocks[b] = blk
            while len(self._blocks) > self.MAX_BLOCKS:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(b)
        return blk

    def tables(self, ids: np.ndarray) -> list[tuple[_Table, np.ndarray]]:
        """(table, mask of ``ids`` it holds): the running session, and the earlier keyframes in
        the blocks around those ``ids`` that are earlier."""
        start, sids, sstamps = self._session()
        out = []
        running = ids >= start
        if running.any() and len(sids):
            t_ids = np.frombuffer(sids, np.int64).copy()
            out.append((_Table(t_ids, np.frombuffer(sstamps, np.int64).copy(), np.zeros(t_ids.size, np.int64)),
                        running))
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
                out.append((_Table(e_ids, e_st, np.cumsum(brk)), earlier))
        return out


class SimilarityCache:
    """Cosine similarities of map keyframes with the recent query keyframes, one row per keyframe
    (one column per query slot of the ring of ``length``), computed on first use from the map's
    stored descriptors and reused while the keyframe's hypotheses live."""

    def __init__(self, length: int, rows: int = CACHE_ROWS) -> None:
        self.length = int(length)
        self.rows = int(rows)
        self.values = np.zeros((self.rows, self.length), np.float32)
        self.filled = np.full((self.rows, self.length), -1, np.int64)   # query seq a value is for
        self.row_of: dict[int, int] = {}
        self.free = list(range(self.rows - 1, -1, -1))
        self.used = np.zeros(self.rows, np.int64)
        self.clock = 0

    def clear(self) -> None:
        self.row_of.clear()
        self.free = list(range(self.rows - 1, -1, -1))
        self.filled.fill(-1)
        self.used.fill(0)

    def lookup(self, db: MapDatabase, ids: np.ndarray, queries: list[QueryRecord], needed: np.ndarray,
               known: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """``[len(queries), len(ids)]`` similarities (``ids`` unique and sorted); only the pairs
        ``needed`` (``[len(queries), len(ids)]`` bool) are sure to be filled in. ``known``: (ids,
        cosines) of the newest query already computed (its search results)."""
        self.clock += 1
        ids = np.asarray(ids, np.int64)
        rows = np.fromiter((self.row_of.get(i, -1) for i in ids.tolist()), np.int64, ids.size)
        new = np.flatnonzero(rows < 0)
        if new.size:
            if new.size > len(self.free):
                self._evict(new.size)
            for n in new.tolist():
                r = self.free.pop()
                rows[n] = r
                self.row_of[int(ids[n])] = r
                self.filled[r] = -1
        self.used[rows] = self.clock
        slots = np.array([q.seq % self.length for q in queries], np.int64)
        seqs = np.array([q.seq for q in queries], np.int64)
        stale = (self.filled[rows[None, :], slots[:, None]] != seqs[:, None]) & needed    # [L, U]
        if known is not None:          # the newest query's cosines its own search already gave
            known_ids, known_scores = known
            k = np.searchsorted(ids, known_ids)
            k = np.minimum(k, ids.size - 1)
            hit = ids[k] == known_ids
            r, j = rows[k[hit]], len(queries) - 1
            self.values[r, slots[j]] = known_scores[hit]
            self.filled[r, slots[j]] = seqs[j]
            stale[j, k[hit]] = False
        need_cols = np.flatnonzero(stale.any(axis=0))
        if need_cols.size:
            # the stale pairs only, one query at a time: the newest query against the anchors it has
            # not seen, earlier queries against the keyframes that just joined a hypothesis
            vectors = db.descriptors(ids[need_cols])                               # [u, D]
            sub = stale[:, need_cols]
            for j in np.flatnonzero(sub.any(axis=1)).tolist():
                c = np.flatnonzero(sub[j])
                r = rows[need_cols[c]]
                self.values[r, slots[j]] = vectors[c] @ queries[j].descriptor
                self.filled[r, slots[j]] = seqs[j]
        return self.values[rows[None, :], slots[:, None]]                          # [L, U]

    def _evict(self, count: int) -> None:
        """Free at least ``count`` rows: the least recently used outside this lookup, growing the
        cache when this lookup alone needs more."""
        old = [(self.used[r], k) for k, r in self.row_of.items() if self.used[r] != self.clock]
        old.sort()
        for _, k in old[:max(0, count - len(self.free))]:
            self.free.append(self.row_of.pop(k))
        if count > len(self.free):
            grow = max(count - len(self.free), self.rows)
            self.values = np.concatenate([self.values, np.zeros((grow, self.length), np.float32)])
            self.filled = np.concatenate([self.filled, np.full((grow, self.length), -1, np.int64)])
            self.used = np.concatenate([self.used, np.zeros(grow, np.int64)])
            self.free.extend(range(self.rows + grow - 1, self.rows - 1, -1))
            self.rows += grow


class SequenceMatcher:
    """The sequence stage of the detector (see the module docstring). Not thread-safe: the
    detector serializes calls."""

    def __init__(self, db: MapDatabase, timeline: Timeline, length: int, seeds: int,
                 speeds: tuple[float, ...], max_gap_s: float, radius: int, min_samples: int) -> None:
        self.db = db
        self.timeline = timeline
        self.length = int(length)
        self.seeds = int(seeds)
        self.speeds = np.asarray(speeds, np.float64)
        self.max_gap_ns = int(round(max_gap_s * 1e9))
        self.radius = int(radius)
        self.min_samples = int(min_samples)
        self.queries: collections.deque[QueryRecord] = collections.deque(maxlen=self.length)
        self.cache = SimilarityCache(self.length)
        self._seq = 0

    def reset(self) -> None:
        """Forget the running sequence (a time jump, a new session, new settings)."""
        self.queries.clear()
        self.cache.clear()
        self.timeline.clear()

    def add_query(self, descriptor: np.ndarray, stamp_ns: int, u: float, beta: float, neutral: float,
                  id_below: int | None, seeds: np.ndarray, seed_scores: np.ndarray) -> None:
        """Append a query keyframe; a gap longer than ``max_gap_s`` since the previous one starts a
        new sequence (the evidence before a time jump says nothing about where the robot is now)."""
        if self.queries and stamp_ns - self.queries[-1].stamp_ns > self.max_gap_ns:
            self.queries.clear()
        self.queries.append(QueryRecord(self._seq, int(stamp_ns), descriptor, float(u), max(float(beta), 1e-9),
                                        float(neutral),
                                        id_below, np.asarray(seeds, np.int64), np.asarray(seed_scores, np.float32)))
        self._seq += 1

    def _spacing_ns(self) -> float:
        st = np.array([q.stamp_ns for q in self.queries], np.float64)
        return float(np.median(np.diff(st))) if st.size > 1 else 1e9

    def decide(self, eligible: int, id_below: int | None) -> SequenceDecision | None:
        """The best hypothesis for the newest query and its false-alarm probability; None when
        there are too few competing places to judge it."""
        queries = list(self.queries)
        L = len(queries)
        dts = np.array([queries[-1].stamp_ns - r.stamp_ns for r in queries], np.int64)   # [L] >= 0
        limits = np.array([np.iinfo(np.int64).max if r.id_below is None else r.id_below for r in queries], np.int64)
        spacing = self._spacing_ns()
        tol = int(2.0 * spacing)         # alignment tolerance: a missed keyframe on either side
        # seeds of the recent queries, each with the time since its query
        # (all of the newest query's matches: in a small map, searched completely, every place)
        recent = queries[-self.seeds:]
        top = [r.seeds[:SEEDS_PER_QUERY] for r in recent[:-1]] + [recent[-1].seeds]
        seeds = np.concatenate(top)
        seed_dt = np.concatenate([np.full(t.size, dt, np.int64) for t, dt in zip(top, dts[-len(recent):])])
        limit_now = limits[-1]
        anchors_all, tables_all, rows_all, segments_all = [], [], [], []
        for table, held in self.timeline.tables(seeds):
            rows = table.rows(seeds[held])
            ok = rows >= 0
            rows, dt = rows[ok], seed_dt[held][ok]
            target = table.stamps[rows] + dt
            a = table.nearest(rows, target)                                    # carried forward
            # carried past the end of its session, a hypothesis has nowhere to go
            ok = (np.abs(table.stamps[a] - target) <= spacing) & (table.ids[a] < limit_now)
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
            target = table.stamps[a][:, None, None] - (self.speeds[None, :, None] * dts[None, None, :]).astype(np.int64)
            k = table.nearest(a, target)                                        # [A, V, L]
            m = table.ids[k]
            ok = (np.abs(table.stamps[k] - target) <= tol) & (m < limits[None, None, :])
            aligned_parts.append(np.where(ok, m, -1))
        ids = np.concatenate(anchors_all)
        segment = np.concatenate(segments_all)          # one number per map session
        aligned = np.concatenate(aligned_parts)
        valid = aligned >= 0
        uniq = np.unique(aligned[valid])
        col = np.searchsorted(uniq, np.where(valid, aligned, uniq[0]))
        needed = np.zeros((L, uniq.size), bool)
        needed[np.broadcast_to(np.arange(L), aligned.shape)[valid], col[valid]] = True
        newest = queries[-1]
        try:
            sims = self.cache.lookup(self.db, uniq, queries, needed, (newest.seeds, newest.seed_scores))  # [L, U]
        except KeyError as err:
            # keyframes removed from the map since a recent query saw them: start again from here
            log.warning('sequence: %s; the evidence along the trajectory starts again', err)
            self.reset()
            return None
        u = np.array([r.u for r in queries])
        beta = np.array([r.beta for r in queries])
        e = (sims[np.arange(L)[None, None, :], col] - u) / beta
        neutral = np.array([r.neutral for r in queries])
        e = np.where(valid, np.maximum(e, FLOOR), neutral)     # no aligned keyframe: no evidence either way
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
        # the newest query's own cosine with each anchor (every anchor is aligned with itself)
        pos = np.minimum(np.searchsorted(uniq, ids), uniq.size - 1)
        cosine = np.where(uniq[pos] == ids, sims[L - 1, pos], np.nan)
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
        # the keyframe reported is the one of the winning stretch this query looks most like: the
        # anchor or its neighbour (REFINE ids) with the higher cosine with the query
        best = int(order[0])
        near = np.flatnonzero((np.abs(ids - ids[best]) <= REFINE) & (segment == segment[best]))
        if near.size > 1 and np.isfinite(cosine[near]).any():
            best = int(near[np.nanargmax(cosine[near])])
        terms = aligned[keep][order[0], best_v[order[0]]]
        return SequenceDecision(int(ids[best]), float(scores[order[0]]), verdict.p_value, L,
                                float(self.speeds[best_v[order[0]]]), verdict.samples, float(cosine[best]),
                                tuple(int(m) for m in terms[terms >= 0]), ranked)


def speeds_between(lo: float, hi: float, count: int) -> tuple[float, ...]:
    """``count`` relative speeds spaced evenly in log between ``lo`` and ``hi`` (1.0 included when
    the range holds it and ``count`` is odd and the range is symmetric)."""
    if count == 1 or math.isclose(lo, hi):
        return (math.sqrt(lo * hi),)
    return tuple(float(v) for v in np.geomspace(lo, hi, count))
