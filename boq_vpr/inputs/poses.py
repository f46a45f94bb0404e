"""Poses: read from a CSV file, and looked up by time.

One reader of poses CSV files (``read_pose_table``) for the map builder (``build-map``,
``make-bag``), the evaluator's ground truth and the training-set builder. A file has a header row
naming its columns (spaces around the names and case do not matter; blank lines and lines starting
with ``#`` are skipped) or is a headerless TUM trajectory ``t x y z [qx qy qz qw]`` (t in seconds).
Columns, each optional:

- ``file`` or ``image``: the image file, relative to its folder;
- a stamp: ``stamp_ns`` (integer nanoseconds) or, in seconds, ``stamp``, ``timestamp``, ``time``
  or ``t`` (the first of these the file has);
- ``x, y[, z]``: position in metres (z 0 without a z column), or ``lat, lon`` in WGS84 degrees;
- ``qx, qy, qz, qw``: orientation; ``yaw`` or ``heading``: heading in degrees;
- ``frame``: frame (place) index; ``frame_id``: the frame the pose is given in.

An empty cell is no value; a position or orientation is given whole or not at all. Malformed files
raise ``DatasetError`` naming the file, the line and the column.

Pose lookup by time is one implementation for the node's odometry, ``build-map`` from a bag and the
evaluator's ground truth: a stamp gets the pose interpolated between the two samples around it when
both are within ``max_dt_ns`` of it (position linearly, orientation by spherical interpolation);
otherwise the nearest sample within ``max_dt_ns``; otherwise nothing.
"""
from __future__ import annotations

import bisect
import csv
import logging
import math
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DatasetError
from ..values import NS_PER_S

log = logging.getLogger(__name__)


@dataclass
class PoseLookup:
    """Poses at query stamps.

    ``index[i]``: the sample used (the nearer one when interpolated), -1 when none was close enough;
    ``positions`` NaN and ``orientations`` NaN where unknown.
    """

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
    """The last ``size`` poses of a stream (e.g. odometry), looked up by stamp.

    Thread-safe: adding never waits for a lookup longer than a copy of the buffer.
    """

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


# ------------------------------------------------------------------------------------------ poses CSV

FILE_COLUMNS = ('file', 'image')
STAMP_COLUMNS = ('stamp_ns', 'stamp', 'timestamp', 'time', 't')   # stamp_ns in nanoseconds, the others seconds
YAW_COLUMNS = ('yaw', 'heading')
# what each kind of value needs, as said in errors
GROUPS = {
    'file': 'file or image (the image file name)',
    'stamp': 'one of ' + ', '.join(STAMP_COLUMNS) + ' (stamp_ns in integer nanoseconds, the others in seconds)',
    'position': 'x, y[, z] (metres)',
    'latlon': 'lat, lon (degrees)',
    'orientation': 'qx, qy, qz, qw',
    'yaw': 'yaw or heading (degrees)',
    'frame': 'frame (the frame index)',
}
# Larger "seconds" are nanoseconds in a column named as seconds (year 5138 otherwise).
_MAX_SECONDS = 1e11


@dataclass
class PoseRow:
    """One row of a poses CSV (``line``: its line in the file); None where it has no value."""

    line: int
    file: str | None = None
    stamp_ns: int | None = None
    position: tuple[float, float, float] | None = None
    latlon: tuple[float, float] | None = None
    orientation: tuple[float, float, float, float] | None = None     # x, y, z, w
    yaw_deg: float | None = None
    frame: int | None = None
    frame_id: str = ''


@dataclass
class PoseTable:
    """The rows of a poses CSV, and which kinds of value (``GROUPS``) its columns give."""

    path: Path
    columns: tuple[str, ...]
    kinds: frozenset[str]
    rows: list[PoseRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def has(self, kind: str) -> bool:
        """Whether the file has the columns of ``kind`` (a key of ``GROUPS``)."""
        return kind in self.kinds

    def by_file(self) -> dict[str, PoseRow]:
        """Map each file name to its row; of a name given twice, the later row (with a warning)."""
        out: dict[str, PoseRow] = {}
        for row in self.rows:
            if row.file in out:
                log.warning('%s:%d: %s appears twice; using the later row', self.path, row.line, row.file)
            out[row.file] = row
        return out


def read_pose_table(path: str | Path, required: Sequence[str | tuple[str, ...]] = ()) -> PoseTable:
    """Read a poses CSV or TUM trajectory (see the module docstring).

    ``required``: kinds of value (keys of ``GROUPS``) that every row must have; an entry that is a
    tuple of kinds asks for at least one of them in every row.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f'{path}: cannot read poses: {err}') from err
    lines = [(n, ln) for n, ln in enumerate(text.splitlines(), start=1)
             if ln.strip() and not ln.lstrip().startswith('#')]
    if not lines:
        raise DatasetError(f'{path}: the file is empty; it needs a header line naming the columns and a row per pose')
    if all(_is_number(v) for v in lines[0][1].replace(',', ' ').split()):
        table = _read_tum(path, lines)
    else:
        table = _read_csv(path, lines)
    for need in required:
        kinds = (need,) if isinstance(need, str) else tuple(need)
        if not any(table.has(k) for k in kinds):
            raise DatasetError(f'{path}: no {" or ".join(kinds)} column; expected '
                               f'{" or ".join(GROUPS[k] for k in kinds)}; found {", ".join(table.columns) or "none"}')
        for row in table.rows:
            if all(_value(row, k) is None for k in kinds):
                first = next(k for k in kinds if table.has(k))
                column = _columns(first, table.columns)[0]
                raise DatasetError(f'{path}:{row.line}: column {column}: the value is missing (short row?)')
    return table


def poses_by_file(path: str | Path) -> dict[str, PoseRow]:
    """Read the rows of a poses CSV by file name (a ``file`` or ``image`` column is required)."""
    table = read_pose_table(path, required=('file',))
    if not table.rows:
        raise DatasetError(f'{path}: no rows; a poses CSV needs a header line and one row per image')
    return table.by_file()


_ATTRIBUTES = {'stamp': 'stamp_ns', 'yaw': 'yaw_deg'}


def _value(row: PoseRow, kind: str):
    return getattr(row, _ATTRIBUTES.get(kind, kind))


def _columns(kind: str, columns: Sequence[str]) -> tuple[str, ...]:
    """Return the columns of ``kind`` present in ``columns`` (in the order values are read)."""
    have = set(columns)
    if kind in ('file', 'stamp', 'yaw'):
        names = {'file': FILE_COLUMNS, 'stamp': STAMP_COLUMNS, 'yaw': YAW_COLUMNS}[kind]
        return tuple(c for c in names if c in have)[:1]
    if kind == 'position':
        return () if not {'x', 'y'} <= have else ('x', 'y', 'z') if 'z' in have else ('x', 'y')
    if kind == 'latlon':
        return ('lat', 'lon') if {'lat', 'lon'} <= have else ()
    if kind == 'orientation':
        return ('qx', 'qy', 'qz', 'qw') if {'qx', 'qy', 'qz', 'qw'} <= have else ()
    return (kind,) if kind in have else ()


def _read_csv(path: Path, lines: list[tuple[int, str]]) -> PoseTable:
    header = next(csv.reader([lines[0][1]]))
    names = [c.strip().lower() for c in header]
    columns = tuple(c for c in names if c)
    found = {k: _columns(k, columns) for k in (*GROUPS, 'frame_id')}
    kinds = frozenset(k for k, cols in found.items() if cols and k != 'frame_id')
    table = PoseTable(path, columns, kinds)
    index = {c: i for i, c in reversed(list(enumerate(names))) if c}
    for line, text in lines[1:]:
        cells = next(csv.reader([text]), [])

        def cell(column: str) -> str:
            i = index[column]
            return cells[i].strip() if i < len(cells) and cells[i] is not None else ''

        def numbers(kind: str) -> tuple[float, ...] | None:
            cols = found[kind]
            raw = [cell(c) for c in cols]
            if not cols or not any(raw):
                return None
            return tuple(_number(v, path, line, c) for v, c in zip(raw, cols))

        row = PoseRow(line)
        if found['file']:
            row.file = cell(found['file'][0]) or None
        if found['stamp']:
            row.stamp_ns = _stamp_ns(cell(found['stamp'][0]), path, line, found['stamp'][0])
        position = numbers('position')
        if position is not None:
            row.position = position if len(position) == 3 else (*position, 0.0)
        row.latlon = numbers('latlon')
        row.orientation = numbers('orientation')
        yaw = numbers('yaw')
        row.yaw_deg = yaw[0] if yaw else None
        if found['frame']:
            raw = cell('frame')
            try:
                row.frame = int(raw) if raw else None
            except ValueError:
                raise DatasetError(f'{path}:{line}: column frame: {raw!r} is not an integer') from None
        if found['frame_id']:
            row.frame_id = cell('frame_id')
        if row.latlon is not None and not (abs(row.latlon[0]) <= 90 and abs(row.latlon[1]) <= 180):
            raise DatasetError(f'{path}:{line}: lat, lon {row.latlon[0]}, {row.latlon[1]} out of range')
        table.rows.append(row)
    return table


def _read_tum(path: Path, lines: list[tuple[int, str]]) -> PoseTable:
    width = None
    rows = []
    for line, text in lines:
        vals = text.replace(',', ' ').split()
        if len(vals) not in (4, 8):
            raise DatasetError(f'{path}: line {line} has {len(vals)} values; a headerless file must be a TUM '
                               'trajectory "t x y z [qx qy qz qw]" (t in seconds), or give a header row naming '
                               'the columns')
        if width is not None and len(vals) != width:
            raise DatasetError(f'{path}: line {line} has {len(vals)} values, line {lines[0][0]} has {width}; '
                               'every row needs the same columns')
        width = len(vals)
        numbers = [_number(v, path, line, 'value') for v in vals[1:]]
        rows.append(PoseRow(line, stamp_ns=_stamp_ns(vals[0], path, line, 't'), position=tuple(numbers[:3]),
                            orientation=tuple(numbers[3:7]) if len(numbers) == 7 else None))
    columns = ('t', 'x', 'y', 'z') + (('qx', 'qy', 'qz', 'qw') if width == 8 else ())
    kinds = frozenset({'stamp', 'position'} | ({'orientation'} if width == 8 else set()))
    return PoseTable(path, columns, kinds, rows)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _number(value: str, path: Path, line: int, column: str) -> float:
    if not value.strip():
        raise DatasetError(f'{path}:{line}: column {column}: the value is missing (short row?)')
    try:
        v = float(value)
    except ValueError:
        raise DatasetError(f'{path}:{line}: column {column}: {value!r} is not a number') from None
    if not math.isfinite(v):
        raise DatasetError(f'{path}:{line}: column {column}: {value!r} is not a finite number')
    return v


def _stamp_ns(value: str, path: Path, line: int, column: str) -> int | None:
    """Parse a stamp cell: integer nanoseconds (``stamp_ns``) or seconds (other columns); None when empty."""
    if not value.strip():
        return None
    if column == 'stamp_ns':
        try:
            ns = int(value)
        except ValueError:
            raise DatasetError(f'{path}:{line}: stamp_ns {value!r} is not an integer') from None
        if not -2**63 <= ns < 2**63:
            raise DatasetError(f'{path}:{line}: stamp_ns {value!r} is out of range')
        return ns
    sec = _number(value, path, line, column)
    if not abs(sec) < _MAX_SECONDS:
        raise DatasetError(f'{path}:{line}: {column} {value!r} is not a time in seconds (nanoseconds? name that '
                           'column stamp_ns)')
    return int(round(sec * NS_PER_S))
