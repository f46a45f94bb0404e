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

1. **Per-query normalization.** The evidence of map keyframe ``m`` for query ``j`` is ``e_j(m) =
   (cos(q_j, m) - u_j) / beta_j``, clipped below at ``FLOOR``: ``u_j``, ``beta_j`` are the level and
   scale of the query's own background (``boq_vpr.detection.calibration``), so a dark frame alike
   everywhere adds little, and every model's scores are on one scale.
2. **Hypotheses are lines followed along the map.** Each of the newest query's best matches ``s``
   starts a line at each relative speed ``v`` (``speeds``: the map driven faster or slower): "query
   ``q`` is at ``s``, and the map goes by ``v`` times as fast as the query". The line is followed
   along ``s``'s map session query by query; it lives while one of the last ``seeds`` queries
   matched the keyframe it is at (at that speed), and ends where its session ends. Its anchor ``a``
   is the map keyframe it is at for the newest query.
3. **Sequences aligned by time, or by travelled distance.** Query ``j`` is aligned with the map
   keyframe of the line's session nearest to where the line was at ``t_j``: ``stamp(s) + v (t_j -
   t_q)`` for the line started at ``s`` by query ``q``. Where every recent query and the map
   session's keyframes have odometry positions (``alignment`` 'auto'), the same holds with the
   distance travelled along the session in place of the stamp: a pass at another speed, or with
   stops, lines up with the map all the same. A sequence follows one session of the map (never
   across a session boundary), takes only map keyframes that were eligible for query ``j`` (outside
   its exclusion window), and a query with no map keyframe near its aligned position (missed
   keyframes, the start of the map) counts what an unrelated keyframe gives on average (no evidence
   either way). A line's score is the sum of its evidence over the last ``length`` queries (on a
   small map, searched completely, that sum double-centred and standardized: ``complete_line_scores``);
   an anchor's score is its best line's.
4. **Decision.** The best anchor's score is judged against the scores of the competing anchors with
   the same extreme-value tail test as single frames (one peak per place, the best place set aside,
   the tail capped on small maps): the probability that a query whose trajectory revisits nothing
   would produce a sequence standing out that far. Evidence accumulates: an unmistakable match
   stands out after a few keyframes, a weak one only after a long consistent stretch. The keyframe
   named is the winning anchor or its neighbour most like the newest query; or the query's own best
   match, where that lies in the winning place and is significant by itself (a line driven at
   another speed may run a keyframe or a few ahead of the query or behind it).

Cost: a query's evidence comes from its own search (a keyframe it did not retrieve counts the bound
of the last one it did); each new query adds one aligned keyframe to each line, only a new line is
aligned with the whole window; only the keyframes reported are read back from the stored
descriptors; map stamps and positions are read from the map's metadata once (``Timeline``; in cached
blocks on a map of more ids than it reads at once).
"""
from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass

import numpy as np

from ..map import MapDatabase
from .calibration import complete_line_scores, judge, p_values, place_peaks
from .timeline import Odometer, Timeline

log = logging.getLogger(__name__)

# Evidence of one query keyframe is clipped below at this (units of its background scale): one
# occluded or missed frame costs a bounded amount, a stretch that does not match costs a lot.
FLOOR = -2.0
# The matched keyframe is the anchor or a neighbour this many ids away, whichever the query is most like.
REFINE = 1
# Aligned keyframes a hypothesis needs before it competes.
MIN_TERMS = 3
# keys of (query, keyframe id) in one sorted array: ids are below 2^40
_KEY = np.int64(1) << 40


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
    single_p: float = math.nan   # false-alarm probability of its best match alone

    def __post_init__(self) -> None:
        order = np.argsort(self.seeds, kind='stable')
        self._ids = self.seeds[order]
        self._scores = self.seed_scores[order].astype(np.float64)
        # a keyframe its search did not return scored below the last one it did: at most this evidence
        last = float(self.seed_scores[-1]) if self.seed_scores.size else self.u
        self._missed = max(min((last - self.u) / self.beta, 0.0), FLOOR)
        # its part of the window's evidence lookup (``SequenceMatcher._window_evidence``)
        self._keys = self.seq * _KEY + self._ids
        self._values = np.maximum((self._scores - self.u) / self.beta, FLOOR)
        self._absent = self.neutral if (self.complete or not self._ids.size) else self._missed

    def evidence(self, m: np.ndarray) -> np.ndarray:
        """Evidence of map keyframes ``m`` for this query (its part of ``SequenceMatcher._window_evidence``)."""
        return _evidence(self._ids, self._values, m, m, self._absent, self.neutral)

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
    # (anchor, score, p, cosine) per place, best first: the best, and the others significant at the rate asked
    ranked: list[tuple[int, float, float, float]]


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
        self._evicted = False                # the newest query pushed the oldest out of the window
        self.reset(timeline=False)

    def reset(self, timeline: bool = True) -> None:
        """Forget the running sequence (a time jump; a new session or new settings: the ``timeline`` too)."""
        self.queries.clear()
        self._odometer = Odometer()      # the distance travelled since the sequence started
        self._lines = _Lines(self.length)
        self._window: dict | None = None     # the window's evidence lookup, carried from query to query
        if timeline:
            self.timeline.clear()

    def add_query(self, descriptor: np.ndarray, stamp_ns: int, u: float, beta: float, neutral: float,
                  id_below: int | None, seeds: np.ndarray, seed_scores: np.ndarray, complete: bool = False,
                  position=None, single_p: float = math.nan) -> None:
        """Append a query keyframe.

        ``position``: its odometry position, when given; ``single_p``: the false-alarm probability of
        its best match alone. A gap longer than ``max_gap_s`` since the previous one starts a new
        sequence (the evidence before a time jump says nothing about where the robot is now). Each
        query is followed by one ``decide``, which carries the hypotheses to it.
        """
        if self.queries and stamp_ns - self.queries[-1].stamp_ns > self.max_gap_ns:
            self.reset(timeline=False)
        # the query appended pushes the oldest out of a full window
        self._evicted = len(self.queries) == self.length
        self.queries.append(QueryRecord(self._seq, int(stamp_ns), descriptor, float(u), max(float(beta), 1e-9),
                                        float(neutral),
                                        id_below, np.asarray(seeds, np.int64), np.asarray(seed_scores, np.float32),
                                        complete, self._odometer.step(position), float(single_p)))
        self._seq += 1

    @staticmethod
    def _offsets(queries: list[QueryRecord], by_distance: bool) -> tuple[np.ndarray, float]:
        """Return how far back along the trajectory each query is from the newest, and the usual step.

        In ns, or in mm of travelled distance. The step is the median spacing of the queries (in
        distance, of those that moved: a stop adds keyframes at one place).
        """
        if by_distance:
            d = np.array([q.distance for q in queries], np.float64) * 1000.0
            steps = np.diff(d)
            steps = steps[steps > 0]
            return np.round(d[-1] - d).astype(np.int64), float(np.median(steps)) if steps.size else 1000.0
        st = [q.stamp_ns for q in queries]
        gaps = sorted(b - a for a, b in zip(st, st[1:]))      # the median, without numpy's overhead
        n = len(gaps)
        spacing = (gaps[(n - 1) // 2] + gaps[n // 2]) / 2.0 if n else 1e9
        return st[-1] - np.array(st, np.int64), spacing

    def _window_evidence(self, queries: list[QueryRecord]):
        """Return a function giving the evidence of map keyframes ``m`` [N, W] for the window's queries.

        One sorted key (query, keyframe id) over the window's searches, so that all the queries' evidence
        comes from one ``searchsorted``: the evidence of a keyframe its search returned, else what a
        keyframe it did not return counts, and the neutral value where no keyframe is aligned (-1).
        The arrays are carried from query to query: the oldest query's part leaves, the newest's joins.
        """
        first, newest = queries[0].seq, queries[-1]
        w = self._window
        if w is not None and w['last'] == newest.seq - 1 and first >= w['first']:
            gone = first - w['first']
            cut = sum(w['sizes'][:gone])
            keys = np.concatenate([w['keys'][cut:], newest._keys])
            values = np.concatenate([w['values'][cut:], newest._values])
            sizes = w['sizes'][gone:] + [newest._keys.size]
            per_query = np.concatenate([w['per_query'][:, gone:],
                                        [[newest.neutral], [newest._absent], [newest.seq]]], axis=1)
        else:
            keys = np.concatenate([q._keys for q in queries])
            values = np.concatenate([q._values for q in queries])
            sizes = [q._keys.size for q in queries]
            per_query = np.array([[q.neutral for q in queries], [q._absent for q in queries],
                                  [q.seq for q in queries]], np.float64)
        self._window = {'first': first, 'last': newest.seq, 'keys': keys, 'values': values, 'sizes': sizes,
                        'per_query': per_query}
        neutral, absent, seqs = per_query[0], per_query[1], per_query[2].astype(np.int64)
        seq_keys = seqs * _KEY
        # map keyframes m [N, W] (-1: none aligned), a column per query of the window
        return lambda m: _evidence(keys, values, seq_keys + np.maximum(m, 0), m, absent, neutral)

    def decide(self, eligible: int, id_below: int | None, rate: float = 1.0) -> SequenceDecision | None:
        """Return the best hypothesis for the newest query and its false-alarm probability.

        None when there are too few competing places to judge it. ``ranked`` holds the best place and
        the next ones significant at ``rate``.
        """
        queries = list(self.queries)
        W = len(queries)
        newest = queries[-1]
        by_distance = self.by_distance and all(math.isfinite(r.distance) for r in queries)
        lines = self._lines
        # how far back each query is (ns, or mm travelled with odometry), the usual step, where the newest is
        modes = {False: (*self._offsets(queries, False), newest.stamp_ns)}
        if by_distance:
            modes[True] = (*self._offsets(queries, True), int(round(newest.distance * 1000.0)))
        big = np.iinfo(np.int64).max
        limits = np.fromiter((big if r.id_below is None else r.id_below for r in queries), np.int64, W)
        limit_now = int(limits[-1])
        cols = np.array([r.seq % self.length for r in queries], np.int64)
        col_now = int(cols[-1])
        evidence = self._window_evidence(queries)
        seeds = newest.seeds
        tables = self.timeline.tables(np.concatenate([lines.ref, seeds]), by_distance)
        # a line no table carries on goes nowhere
        lines.alive[:] = False
        if self._evicted:
            # the oldest query left the window: its terms leave the lines' sums
            lines.total[:] -= lines.term[:, col_now]
            lines.count[:] -= lines.aligned[:, col_now] >= 0
        lines.term[:, col_now] = newest.neutral
        lines.aligned[:, col_now] = -1
        born = []
        seed_segment = np.full(seeds.size, -1, np.int64)     # the session of each of the newest query's matches
        for t_index, (table, held) in enumerate(tables):
            dist = table.by_distance
            offsets, spacing, x_now = modes[dist]
            tol = int(2.0 * spacing)         # alignment tolerance: a missed keyframe on either side
            # 1. the lines of this table advance to the newest query
            mine = np.flatnonzero(held[:lines.size] & (lines.dist == dist))
            rows = table.rows(lines.ref[mine])
            keep = rows >= 0
            mine, rows = mine[keep], rows[keep]
            going = mine
            if mine.size == lines.size:
                mine = slice(0, lines.size)        # every line (the usual case): views, not copies
            speed = self.speeds[lines.speed_index[mine]]
            target = table.coord[rows] + lines.off[mine] + speed * (x_now - lines.x[int(dist)])
            goal = np.round(target).astype(np.int64)
            k = table.nearest(rows, goal)
            m = table.ids[k]
            miss = np.abs(table.coord[k] - goal)
            aligned = np.where((miss <= tol) & (m < limit_now), m, -1)
            lines.term[mine, col_now] = newest.evidence(aligned)
            lines.aligned[mine, col_now] = aligned
            lines.ref[mine] = m
            lines.off[mine] = target - table.coord[k]
            # carried past the end of its session (or into the exclusion window), a line has nowhere to go
            lines.alive[mine] = (miss <= spacing) & (m < limit_now)
            lines.segment[mine] = table.segment[k] + (t_index << 32)
            # 2. the newest query's matches in this table start new lines, unless a line of that
            # speed is already there
            mine_seeds = np.flatnonzero(held[lines.size:])
            srows = table.rows(seeds[mine_seeds])
            seed_segment[mine_seeds[srows >= 0]] = table.segment[srows[srows >= 0]] + (t_index << 32)
            srows = srows[srows >= 0]
            nv = self.speeds.size
            cand_rows = np.repeat(srows, nv)
            cand_v = np.tile(np.arange(nv), srows.size)
            going = going[lines.alive[mine]]
            if going.size and cand_rows.size:
                # the existing lines through the match are proposed again: they live on
                there = lines.ref[going] * nv + lines.speed_index[going]
                key = table.ids[cand_rows] * nv + cand_v
                lines.seeded[going[_member(there, key)]] = newest.seq
                hit = _member(key, there)
                cand_rows, cand_v = cand_rows[~hit], cand_v[~hit]
            if cand_rows.size:
                # backfill: each new line aligned with every query of the window
                back = (self.speeds[cand_v][:, None] * offsets[None, :]).astype(np.int64)      # [N, W]
                goal = table.coord[cand_rows][:, None] - back
                k = table.nearest(cand_rows, goal)
                m = table.ids[k]
                ok = (np.abs(table.coord[k] - goal) <= tol) & (m < limits[None, :])
                al = np.where(ok, m, -1)
                e = evidence(al)
                born.append((table, t_index, cand_rows, cand_v, al, e))
        lines.total[:] += lines.term[:, col_now]
        lines.count[:] += lines.aligned[:, col_now] >= 0
        lines.prune(newest.seq - self.seeds)
        lines.extend(born, cols, newest.seq)
        lines.x = [modes[False][2], modes[True][2] if by_distance else 0]
        if lines.size == 0:
            return None
        totals, counts = lines.total, lines.count
        # a hypothesis needs MIN_TERMS aligned keyframes: one frame alone is not a trajectory
        compete = lines.alive & (counts >= min(MIN_TERMS, W))
        if not compete.any():
            return None
        idx = np.flatnonzero(compete)
        idx = idx[np.argsort(-totals[idx], kind='stable')]
        # one score per anchor: its best line (the best speed)
        _, first = np.unique(lines.ref[idx], return_index=True)
        idx = idx[np.sort(first)]
        ids, scores, segment = lines.ref[idx], totals[idx], lines.segment[idx]
        # on a small map the places are judged by complete_line_scores (the best is the best sum all the same)
        judged = complete_line_scores([q._ids for q in queries], [q._values for q in queries],
                                      lines.aligned[idx][:, cols]) if all(q.complete for q in queries) else scores
        peaks = place_peaks(ids, self.radius)
        background = judged[peaks[1:]]
        # complete: every eligible place was a seed of this query (a small map)
        complete = eligible <= newest.seeds.size
        verdict = judge(float(judged[0]), background, eligible, complete, self.radius, self.min_samples)
        if verdict is None:
            return None
        # the places reported: the best, and the next ones (at most 16) significant at ``rate`` (none if the 2nd is not)
        top, ps = peaks[:1], [verdict.p_value]
        if peaks.size > 1 and (rate >= 1.0 or judge(float(judged[peaks[1]]), background, eligible, complete,
                                                    self.radius, self.min_samples).p_value <= rate):
            p_next = p_values(judged[peaks[1:16]], background, eligible, complete, self.radius, self.min_samples)
            top = np.concatenate([top, peaks[1:16][p_next <= rate]])
            ps += p_next[p_next <= rate].tolist()
        # each reported place's anchor and its neighbours within REFINE ids in the same session
        # ([reported places, anchors]: a few rows)
        close = (np.abs(ids[None, :] - ids[top][:, None]) <= REFINE) & (segment[None, :] == segment[top][:, None])
        place, member = np.nonzero(close)
        near: list[list[int]] = [[] for _ in range(top.size)]
        for r, _, i in sorted(zip(place.tolist(), ids[member].tolist(), member.tolist())):
            near[r].append(i)            # each place's anchors in id order
        wanted = np.flatnonzero(close.any(axis=0))
        cosine = np.full(ids.shape, np.nan)
        cosine[wanted] = newest.cosines(ids[wanted])
        # a keyframe the search did not return is less like the query than those it did: the stored
        # descriptors are read only for a place none of whose keyframes the search returned
        seen = (close & np.isfinite(cosine)[None, :]).any(axis=1)
        missing = np.flatnonzero(close[~seen].any(axis=0))
        if missing.size:
            try:
                cosine[missing] = self.db.descriptors(ids[missing]) @ newest.descriptor
            except KeyError as err:
                # keyframes removed from the map since a recent query saw them: start again from here
                log.warning('sequence: %s; the evidence along the trajectory starts again', err)
                self.reset()
                return None
        ranked = []
        cos = cosine.tolist()
        for peak, close, p in zip(top.tolist(), near, ps):
            i = peak
            known = [c for c in close if math.isfinite(cos[c])]
            if len(close) > 1 and known:   # the place's keyframe most like the query
                i = max(known, key=cos.__getitem__)
            ranked.append((int(ids[i]), float(scores[peak]), p, cos[i]))
        # the keyframe reported: the winning place's first ranked entry (the anchor or a neighbour)
        anchor, score, p_best, anchor_cosine = ranked[0]
        # The head of a line driven at another speed may run a keyframe or a few ahead or behind. Where the
        # newest query's own best match is a keyframe of the winning place (within ``radius`` ids, as the
        # test counts places, in its session), significant by itself at the rate asked and more alike, it is
        # the one named.
        own = int(seeds[0]) if seeds.size else -1
        if (own >= 0 and newest.single_p <= rate and abs(own - anchor) <= self.radius
                and seed_segment[0] == segment[top[0]] and all(r[0] != own for r in ranked[1:])
                and not newest.seed_scores[0] <= anchor_cosine):         # more alike, or the cosine unknown (NaN)
            anchor, anchor_cosine = own, float(newest.seed_scores[0])
            ranked[0] = (anchor, score, p_best, anchor_cosine)
        best = idx[0]
        terms = lines.aligned[best, cols]
        return SequenceDecision(anchor, float(scores[0]), verdict.p_value, W,
                                float(self.speeds[lines.speed_index[best]]), verdict.samples, anchor_cosine,
                                tuple(int(m) for m in terms[terms >= 0]), ranked)


class _Lines:
    """The hypotheses being followed: lines through the map at a relative speed.

    A line started where a query matched a map keyframe, at one of the speeds, and is carried along
    its map session query by query: its position on the map is ``coord(ref) + off`` at the newest
    query. Each keeps the evidence (``term``) and the map keyframe (``aligned``, -1: none) of every
    query of the window, in ring columns ``seq % length``; a new line is aligned backwards with the
    whole window once, an existing one only with each new query. Rows ``[:size]`` are in use; the
    arrays grow by doubling.
    """

    FIELDS = {'ref': np.int64, 'off': np.float64, 'speed_index': np.int64,
              'seeded': np.int64, 'alive': bool, 'segment': np.int64, 'dist': bool,
              'total': np.float64, 'count': np.int64}

    def __init__(self, length: int) -> None:
        self.length = length
        self.size = 0
        self.x = [0, 0]                              # the newest query's position in ns and in mm travelled
        # ref: the map keyframe each line is at, off: how far past it (map units), seeded: the last query that
        # proposed it, segment: its session, dist: by distance, total, count: its terms' sum, how many aligned
        self._data = {name: np.zeros(0, dtype) for name, dtype in self.FIELDS.items()}
        self._data['term'] = np.zeros((0, length), np.float64)
        self._data['aligned'] = np.zeros((0, length), np.int64)

    def __getattr__(self, name: str) -> np.ndarray:
        data = self.__dict__.get('_data')
        if data is None or name not in data:
            raise AttributeError(name)
        return data[name][:self.size]

    def extend(self, born, cols: np.ndarray, seq: int) -> None:
        """Add the new lines: (table, its index, rows, speed indices, aligned ids [N, W], evidence [N, W])."""
        count = sum(len(b[2]) for b in born)
        if not count:
            return
        lo, hi = self.size, self.size + count
        if hi > len(self._data['ref']):
            grow = max(hi, 2 * len(self._data['ref']), 64)
            for name, arr in self._data.items():
                new = np.zeros((grow,) + arr.shape[1:], arr.dtype)
                new[:lo] = arr[:lo]
                self._data[name] = new
        d = self._data
        for table, n, rows, v, al, e in born:
            hi = lo + rows.size
            d['ref'][lo:hi] = table.ids[rows]
            d['off'][lo:hi] = 0.0
            d['speed_index'][lo:hi] = v
            d['seeded'][lo:hi] = seq
            d['alive'][lo:hi] = True
            d['segment'][lo:hi] = table.segment[rows] + (n << 32)
            d['dist'][lo:hi] = table.by_distance
            d['term'][lo:hi, cols] = e
            d['total'][lo:hi] = e.sum(axis=1)
            d['count'][lo:hi] = (al >= 0).sum(axis=1)
            d['aligned'][lo:hi] = -1
            d['aligned'][lo:hi, cols] = al
            lo = hi
        self.size = lo

    def prune(self, oldest: int) -> None:
        """Drop the lines that went nowhere, and those no query proposed since ``oldest``."""
        keep = np.flatnonzero(self.alive & (self.seeded > oldest))
        if keep.size == self.size:
            return
        for arr in self._data.values():
            arr[:keep.size] = arr[keep]
        self.size = int(keep.size)


def _evidence(keys: np.ndarray, values: np.ndarray, key: np.ndarray, m: np.ndarray, absent, neutral) -> np.ndarray:
    """Return the evidence of map keyframes ``m`` (``neutral`` where -1: none aligned) looked up by ``key``.

    ``values`` where the sorted ``keys`` hold the key (the search returned the keyframe), else ``absent``.
    """
    if not keys.size:
        return np.where(m >= 0, absent, neutral)
    k = np.minimum(np.searchsorted(keys, key), keys.size - 1)
    return np.where(m >= 0, np.where(keys[k] == key, values[k], absent), neutral)


def _member(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return whether each of ``a`` is in ``b``: ``np.isin``, 8x faster on a few hundred keys (34 against 260 us)."""
    b = np.sort(b)
    k = np.minimum(np.searchsorted(b, a), b.size - 1)
    return b[k] == a if b.size else np.zeros(a.shape, bool)

