"""Map sessions followed in time, or in travelled distance: the keyframe of a session nearest to a position.

The sequence stage (``boq_vpr.detection.sequence``) aligns the recent query keyframes with stretches
of the map. It needs, for any keyframe id, the keyframes of the same map session ordered by stamp or
by the distance travelled along the session, without loading anything proportional to the map: the
running session comes from the detector's own arrays, earlier keyframes from the map's metadata in
blocks of ids, cached.
"""
from __future__ import annotations

import collections
import math
from typing import Callable

import numpy as np

from ..map import MapDatabase


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

    @classmethod
    def of_session(cls, ids: np.ndarray, coord: np.ndarray, key: np.ndarray, by_distance: bool) -> '_Table':
        """Make the table of one session from arrays kept up to date (no copy): its key is ``coord - coord[0]``."""
        table = cls.__new__(cls)
        table.ids, table.coord, table.by_distance, table.key = ids, coord, by_distance, key
        table.segment = np.broadcast_to(np.zeros(1, np.int64), ids.shape)
        table.first = np.broadcast_to(coord[:1], ids.shape)
        return table

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id (-1 when absent)."""
        n = self.ids.size
        if not n:
            return np.full(ids.shape, -1)
        first = int(self.ids[0])
        if int(self.ids[-1]) - first == n - 1:
            # consecutive ids (the usual case): the row is the id's distance from the first
            k = ids - first
            return np.where((k >= 0) & (k < n), k, -1)
        k = np.minimum(np.searchsorted(self.ids, ids), n - 1)
        return np.where(self.ids[k] == ids, k, -1)

    def nearest(self, rows: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Return the row of the keyframe of each anchor's session nearest to each target.

        The anchors are at ``rows`` (shape [A]), the target positions are ``targets`` ([A, ...]).
        """
        last = self.ids.size - 1
        if self.segment[0] == self.segment[-1]:
            # one session: no session boundary to stop at
            key = self.segment[0] * self.SPAN + np.minimum(np.maximum(targets - self.first[0], 0), self.SPAN - 1)
            k = np.minimum(np.searchsorted(self.key, key), last)
            prev = np.maximum(k - 1, 0)
        else:
            shape = (-1,) + (1,) * (targets.ndim - 1)
            seg = self.segment[rows].reshape(shape)
            first = self.first[rows].reshape(shape)
            key = seg * self.SPAN + np.minimum(np.maximum(targets - first, 0), self.SPAN - 1)
            k = np.minimum(np.searchsorted(self.key, key), last)
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


class Odometer:
    """The distance travelled along a trajectory: the sum of the straight steps between its positions.

    A missing or non-finite position gives NaN and is skipped: the next one continues from the last
    known position.
    """

    def __init__(self) -> None:
        self._last: tuple[np.ndarray, float] | None = None   # the last known position, distance there

    def step(self, position) -> float:
        """Return the distance travelled to ``position`` (m), NaN without one."""
        if position is None:
            return math.nan
        p = np.asarray(position, np.float64).ravel()[:3]
        if p.size != 3 or not np.isfinite(p).all():
            return math.nan
        d = 0.0 if self._last is None else self._last[1] + float(np.linalg.norm(p - self._last[0]))
        self._last = (p, d)
        return d


class SessionTrack:
    """The running session's keyframes: ids, stamps and travelled distance, in arrays grown by doubling.

    Its tables (by stamps, or by travelled distance while every keyframe has a position) are views of
    these arrays, so nothing proportional to the session is copied per query. The distance is summed
    over the straight steps between keyframes; a keyframe without a position is skipped.
    """

    def __init__(self) -> None:
        self.size = 0
        self._ids = np.zeros(0, np.int64)
        self._stamps = np.zeros(0, np.int64)
        self._time_key = np.zeros(0, np.int64)     # stamp - the first stamp (clipped to the table's span)
        self._dist_mm = np.zeros(0, np.int64)      # mm travelled to each keyframe, -1 without a position
        self._odometer = Odometer()
        self.positioned = True                                    # every keyframe so far has a position

    @property
    def ids(self) -> np.ndarray:
        return self._ids[:self.size]

    @property
    def stamps(self) -> np.ndarray:
        return self._stamps[:self.size]

    @property
    def distances(self) -> np.ndarray:
        """Metres travelled to each keyframe, NaN without a position."""
        mm = self._dist_mm[:self.size]
        return np.where(mm >= 0, mm / 1000.0, np.nan)

    def append(self, kid: int, stamp_ns: int, position) -> None:
        """Add keyframe ``kid`` (ids and stamps never go back within a session)."""
        n = self.size
        if n == self._ids.size:
            grow = max(64, 2 * n)
            for name in ('_ids', '_stamps', '_time_key', '_dist_mm'):
                old = getattr(self, name)
                new = np.zeros(grow, old.dtype)
                new[:n] = old[:n]
                setattr(self, name, new)
        d = self._odometer.step(position)
        self.positioned = self.positioned and math.isfinite(d)
        self._ids[n] = kid
        self._stamps[n] = stamp_ns
        self._time_key[n] = min(stamp_ns - int(self._stamps[0]), _Table.SPAN - 1)
        self._dist_mm[n] = round(d * 1000.0) if math.isfinite(d) else -1
        self.size = n + 1

    def table(self, by_distance: bool) -> _Table:
        """Return the session's table: by travelled distance when asked and every keyframe has a position."""
        n = self.size
        if by_distance and self.positioned:
            coord = self._dist_mm[:n]       # from 0 at the first keyframe: its own key
            return _Table.of_session(self._ids[:n], coord, coord, True)
        return _Table.of_session(self._ids[:n], self._stamps[:n], self._time_key[:n], False)


class Timeline:
    """Stamps, positions and sessions of map keyframes by id, for following a session of the map.

    A session is followed in time, or in travelled distance where every keyframe has a position.

    Keyframes of the running session come from the detector's own arrays. Earlier keyframes (a
    loaded map, earlier sessions) are read from the map's metadata: all at once into one table where
    their ids stay below ``WHOLE_MAX`` (no more than the block cache may hold, so the time per query
    does not grow with the map while the table fills), else in blocks of ``BLOCK`` ids around the
    keyframes asked for, cached, so that nothing proportional to a larger map is held in memory.
    Among earlier keyframes a session is a run of consecutive ids with one session label and stamps
    that never go back; the running session is its own id range.
    """

    BLOCK = 64
    MAX_BLOCKS = 4096       # blocks cached
    TABLE_BLOCKS = 2048     # blocks the table keeps while queries need fewer than half of them
    WHOLE_MAX = MAX_BLOCKS * BLOCK    # earlier ids below this are read at once (about 40 bytes a keyframe)

    def __init__(self, db: MapDatabase, session: Callable[[], tuple[int, SessionTrack]]) -> None:
        self.db = db
        self._session = session        # () -> (the running session's first id, its keyframes)
        self._blocks: collections.OrderedDict[int, tuple[np.ndarray, ...]] = collections.OrderedDict()
        self._labels: dict[str, int] = {}
        # the table of earlier keyframes last built: (session start, by distance, blocks it covers, table,
        # its keyframes: ids, stamps, session labels, and positions when by distance)
        self._earlier: tuple | None = None
        # every earlier keyframe at once (ids below WHOLE_MAX): the session start, and a table per ordering
        # (by travelled distance or not)
        self._whole: tuple[int, dict[bool, _Table | None]] | None = None

    def clear(self) -> None:
        self._blocks.clear()
        self._earlier = None
        self._whole = None

    def _block(self, b: int) -> tuple[np.ndarray, ...]:
        blk = self._blocks.get(b)
        if blk is None:
            ids, stamps, labels, positions = self.db.keyframe_stamps(b * self.BLOCK, (b + 1) * self.BLOCK)
            blk = (ids, stamps, self._codes(labels), positions)
            self._blocks[b] = blk
            while len(self._blocks) > self.MAX_BLOCKS:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(b)
        return blk

    def tables(self, ids: np.ndarray, by_distance: bool = False) -> list[tuple[_Table, np.ndarray]]:
        """Return (table, mask of ``ids`` it holds) pairs.

        The tables are the running session, and the earlier keyframes: all of them where their ids
        stay below ``WHOLE_MAX``, else those in the blocks around the ``ids`` that are earlier.
        ``by_distance``: a table whose keyframes all have positions is ordered by travelled distance,
        any other by stamps.
        """
        start, track = self._session()
        out = []
        running = ids >= start
        if running.any() and track.size:
            out.append((track.table(by_distance), running))
        earlier = ~running
        if earlier.any() and start <= self.WHOLE_MAX:
            table = self._whole_table(start, by_distance)
            if table is not None:
                out.append((table, earlier))
        elif earlier.any():
            own = ids[earlier] // self.BLOCK
            cached = self._earlier
            if cached is not None and cached[:2] == (start, by_distance):
                covered = cached[2]
                # the blocks of these ids were read, with their neighbours when they were first wanted
                if own.max() < covered.size and covered[own].all():
                    out.append((cached[3], earlier))
                    return out
            blocks = np.unique(own)
            wanted = np.unique(np.concatenate([blocks - 1, blocks, blocks + 1]))
            wanted = wanted[(wanted >= 0) & (wanted * self.BLOCK < start)]
            base = None
            if cached is not None and cached[:2] == (start, by_distance):
                # the blocks read so far stay in the table while they are few (its size is bounded
                # by what the queries need); only the blocks not in it yet are read and merged in
                held = np.flatnonzero(cached[2])
                both = np.union1d(held, wanted)
                if both.size <= min(self.MAX_BLOCKS, max(2 * wanted.size, self.TABLE_BLOCKS)):
                    base, wanted = cached[4], both
            new = wanted if base is None else np.setdiff1d(wanted, held, assume_unique=True)
            built = self._earlier_table(new, start, by_distance, base)
            if built is not None:
                covered = np.zeros(int(wanted[-1]) + 1, bool)
                covered[wanted] = True
                self._earlier = (start, by_distance, covered, *built)
                out.append((built[0], earlier))
        return out

    def _earlier_table(self, blocks: np.ndarray, start: int, by_distance: bool,
                       base: tuple[np.ndarray, ...] | None = None) -> tuple[_Table, tuple] | None:
        """Build the table of the earlier keyframes (ids below ``start``) in ``blocks``, and those of ``base``.

        ``base``: the keyframes of a table built before (ids, stamps, session labels, and positions
        when ``by_distance``), which the keyframes of ``blocks`` are merged into in id order (one copy
        of the table, where building it from its blocks again took a copy per block). Returns the
        table and its keyframes (for the next merge); None without keyframes.
        """
        parts = [self._block(int(b)) for b in blocks]
        fields = [np.concatenate([p[f] for p in parts]) if parts else None for f in range(4 if by_distance else 3)]
        if parts:
            keep = fields[0] < start
            fields = [x[keep] for x in fields]
        if base is not None:
            if parts:
                at = np.searchsorted(base[0], fields[0])
                fields = [np.insert(old, at, x, axis=0) for old, x in zip(base, fields)]
            else:
                fields = list(base)
        table = self._build(fields, by_distance, unread=True)
        return None if table is None else (table, tuple(fields))

    def _whole_table(self, start: int, by_distance: bool) -> _Table | None:
        """Return the table of every earlier keyframe (ids below ``start``), read once and kept.

        The table by stamps and the one by travelled distance are kept apart: the recent queries'
        odometry may come and go.
        """
        if self._whole is None or self._whole[0] != start:
            self._whole = (start, {})
        tables = self._whole[1]
        if by_distance not in tables:
            ids, stamps, labels, positions = self.db.keyframe_stamps(0, start)
            tables[by_distance] = self._build([ids, stamps, self._codes(labels), positions], by_distance, unread=False)
        return tables[by_distance]

    def _codes(self, labels: np.ndarray) -> np.ndarray:
        """Return a number for each session label (the same number for a label every time)."""
        return np.array([self._labels.setdefault(x, len(self._labels)) for x in labels.tolist()], np.int64)

    def _build(self, fields: list, by_distance: bool, unread: bool) -> _Table | None:
        """Return the table of earlier keyframes (ids, stamps, session codes, positions), None without any.

        ``unread``: ids apart across a block boundary are blocks not read, where a session is not known to go on.
        """
        e_ids, e_st, labels = fields[:3]
        if e_ids is None or not e_ids.size:
            return None
        brk = np.zeros(e_ids.size, bool)
        if unread:
            brk[1:] = (np.diff(e_ids) > 1) & (np.diff(e_ids // self.BLOCK) > 0)
        brk[1:] |= labels[1:] != labels[:-1]
        brk[1:] |= np.diff(e_st) < 0
        segment = np.cumsum(brk)
        if by_distance and np.isfinite(fields[3]).all():
            return _Table(e_ids, travelled_mm(fields[3], segment), segment, True)
        return _Table(e_ids, e_st, segment)
