"""Pose lookup by time: one implementation for the node's odometry, ``build-map`` from a bag and the
evaluator's ground truth.

A stamp gets the pose interpolated between the two samples around it when both are within
``max_dt_ns`` of it (position linearly, orientation by spherical interpolation); otherwise the
nearest sample within ``max_dt_ns``; otherwise nothing.
"""
from __future__ import annotations

import bisect
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass
class PoseLookup:
    """Poses at query stamps. ``index[i]``: the sample used (the nearer one when interpolated), -1 when
    none was close enough; ``positions`` NaN and ``orientations`` NaN where unknown."""

    positions: np.ndarray       # [N, 3]
    orientations: np.ndarray    # [N, 4] x, y, z, w (NaN rows: no orientation)
    index: np.ndarray           # [N] int64

    @property
    def found(self) -> np.ndarray:
        return self.index >= 0


def slerp(q0: np.ndarray, q1: np.ndarray, w: float) -> np.ndarray:
    """Spherical interpolation between unit quaternions (x, y, z, w) at weight ``w`` in [0, 1]."""
    q0 = np.asarray(q0, np.float64)
    q1 = np.asarray(q1, np.float64)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:          # the shorter arc
        q1, dot = -q1, -dot
    if dot > 0.9995:       # nearly equal: linear, then normalize
        q = q0 + w * (q1 - q0)
    else:
        theta = np.arccos(dot)
        q = (np.sin((1 - w) * theta) * q0 + np.sin(w * theta) * q1) / np.sin(theta)
    return q / np.linalg.norm(q)


def lookup_poses(sample_ns, sample_positions, query_ns, max_dt_ns: int,
                 sample_orientations=None) -> PoseLookup:
    """Poses at ``query_ns`` from samples sorted by stamp (see the module docstring)."""
    t = np.asarray(sample_ns, np.int64).reshape(-1)
    p = np.asarray(sample_positions, np.float64).reshape(-1, 3)
    o = None if sample_orientations is None else np.asarray(sample_orientations, np.float64).reshape(-1, 4)
    q = np.asarray(query_ns, np.int64).reshape(-1)
    assert len(t) == len(p) and (o is None or len(o) == len(t)), 'samples differ in length'
    assert np.all(np.diff(t) >= 0), 'sample stamps must be sorted'
    n = len(q)
    out = PoseLookup(np.full((n, 3), np.nan), np.full((n, 4), np.nan), np.full(n, -1, np.int64))
    if len(t) == 0:
        return out
    hi = np.searchsorted(t, q, side='left')
    for i, (s, h) in enumerate(zip(q.tolist(), hi.tolist())):
        lo = h - 1
        near = [j for j in (lo, h) if 0 <= j < len(t) and abs(int(t[j]) - s) <= max_dt_ns]
        if not near:
            continue
        best = min(near, key=lambda j: abs(int(t[j]) - s))
        out.index[i] = best
        if len(near) == 2 and t[h] > t[lo]:
            w = (s - int(t[lo])) / (int(t[h]) - int(t[lo]))
            out.positions[i] = (1 - w) * p[lo] + w * p[h]
            if o is not None and np.isfinite(o[lo]).all() and np.isfinite(o[h]).all():
                out.orientations[i] = slerp(o[lo], o[h], w)
        else:
            out.positions[i] = p[best]
            if o is not None:
                out.orientations[i] = o[best]
    return out


class PoseBuffer:
    """The last ``size`` poses of a stream (e.g. odometry), looked up by stamp. Thread-safe: adding
    never waits for a lookup longer than a copy of the buffer."""

    def __init__(self, size: int) -> None:
        self._stamps: deque[int] = deque(maxlen=size)
        self._poses: deque[tuple[tuple, tuple, str]] = deque(maxlen=size)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._stamps)

    @property
    def last_stamp_ns(self) -> int | None:
        with self._lock:
            return self._stamps[-1] if self._stamps else None

    def add(self, stamp_ns: int, position: tuple, orientation: tuple, frame_id: str) -> bool:
        """Append a pose; False (and nothing stored) when its stamp is not after the last one."""
        with self._lock:
            if self._stamps and stamp_ns <= self._stamps[-1]:
                return False
            self._stamps.append(int(stamp_ns))
            self._poses.append((tuple(position), tuple(orientation), frame_id))
            return True

    def clear(self) -> None:
        with self._lock:
            self._stamps.clear()
            self._poses.clear()

    def at(self, stamp_ns: int, max_dt_ns: int) -> tuple[tuple | None, tuple | None, str]:
        """(position, orientation, frame_id) at ``stamp_ns`` (``lookup_poses``), or (None, None, '')."""
        with self._lock:
            i = bisect.bisect_left(self._stamps, stamp_ns)
            window = [j for j in (i - 1, i) if 0 <= j < len(self._stamps)]
            if not window:
                return None, None, ''
            stamps = [self._stamps[j] for j in window]
            poses = [self._poses[j] for j in window]
        found = lookup_poses(stamps, [x[0] for x in poses], [stamp_ns], max_dt_ns, [x[1] for x in poses])
        k = int(found.index[0])
        if k < 0:
            return None, None, ''
        return tuple(found.positions[0].tolist()), tuple(found.orientations[0].tolist()), poses[k][2]
