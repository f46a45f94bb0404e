"""The keyframe metadata store of a map: SQLite with keyframes, thumbnails and full descriptors.

While the map is open the store is a scratch SQLite file (in ``$TMPDIR``, removed when the map is
closed or collected), not an in-memory database: thumbnails and re-ranking descriptors of a large
map stay on disk and are read on demand. The file runs in WAL mode, so a save copies a consistent
snapshot (``snapshot_reader``) while adds go on. The saved ``keyframes.sqlite`` is a plain copy.
"""
from __future__ import annotations

import contextlib
import shutil
import sqlite3
import tempfile
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np

from ..errors import MapError

DB_FILE = 'keyframes.sqlite'


@dataclass
class Keyframe:
    """One keyframe of the map: when and where it was taken, and where it came from."""

    id: int                      # assigned by the map (-1 before add)
    stamp_ns: int                # ROS time in nanoseconds
    position: tuple[float, float, float] | None = None
    orientation: tuple[float, float, float, float] | None = None   # quaternion x, y, z, w
    frame_id: str = ''
    source: str = ''             # file name, or 'bag:/topic', ...
    session: str = ''

    def to_dict(self) -> dict:
        d = asdict(self)
        d['position'] = list(self.position) if self.position is not None else None
        d['orientation'] = list(self.orientation) if self.orientation is not None else None
        return d


# ---------------------------------------------------------------- thumbnails (images for geometric verification)
def make_thumbnail(image: np.ndarray, max_side: int = 160) -> np.ndarray:
    """Return a grayscale uint8 copy of ``image`` (RGB or gray) no larger than ``max_side`` pixels."""
    img = np.asarray(image)
    if img.ndim == 3:
        img = cv2.cvtColor(img[:, :, :3], cv2.COLOR_RGB2GRAY)
    if img.dtype != np.uint8:
        raise MapError(f'thumbnail must be uint8, got {img.dtype}')
    h, w = img.shape[:2]
    scale = max_side / max(h, w)
    if scale < 1.0:
        img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img)


def encode_thumbnail(image: np.ndarray, max_side: int = 160) -> bytes:
    """Encode a small grayscale PNG of ``image`` (RGB or gray uint8) for geometric verification."""
    ok, buf = cv2.imencode('.png', make_thumbnail(image, max_side))
    if not ok:
        raise MapError('thumbnail could not be encoded as PNG')
    return buf.tobytes()


def decode_thumbnail(png: bytes, what: str) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise MapError(f'thumbnail of {what} cannot be decoded (corrupt map database)')
    return img


# ---------------------------------------------------------------- rows
_SCHEMA = """
CREATE TABLE IF NOT EXISTS keyframes (
    id INTEGER PRIMARY KEY,
    stamp_ns INTEGER NOT NULL,
    px REAL, py REAL, pz REAL,
    qx REAL, qy REAL, qz REAL, qw REAL,
    frame_id TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT '',
    session TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS keyframes_stamp ON keyframes(stamp_ns);
CREATE INDEX IF NOT EXISTS keyframes_session_stamp ON keyframes(session, stamp_ns);
CREATE TABLE IF NOT EXISTS thumbnails (
    id INTEGER PRIMARY KEY,
    png BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS vectors (
    id INTEGER PRIMARY KEY,
    v BLOB NOT NULL
);
"""
_COLUMNS = 'id, stamp_ns, px, py, pz, qx, qy, qz, qw, frame_id, source, session'


def _row_to_keyframe(row: tuple) -> Keyframe:
    kid, stamp, px, py, pz, qx, qy, qz, qw, frame_id, source, session = row
    position = (px, py, pz) if px is not None else None
    orientation = (qx, qy, qz, qw) if qx is not None else None
    return Keyframe(int(kid), int(stamp), position, orientation, frame_id, source, session)


def keyframe_row(kid: int, kf: Keyframe) -> tuple:
    """Return the SQLite row of a keyframe (MapError for a malformed pose)."""
    p = kf.position
    q = kf.orientation
    if p is not None and len(p) != 3:
        raise MapError(f'keyframe position must have 3 values (x, y, z), got {p!r}')
    if q is not None and len(q) != 4:
        raise MapError(f'keyframe orientation must be a quaternion (x, y, z, w), got {q!r}')
    p = tuple(float(v) for v in p) if p is not None else (None, None, None)
    q = tuple(float(v) for v in q) if q is not None else (None, None, None, None)
    return (kid, int(kf.stamp_ns), *p, *q, str(kf.frame_id), str(kf.source), str(kf.session))


def _connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        # as_uri() percent-encodes the path: '#', '?' or '%' in a folder name would end the path
        return sqlite3.connect(path.resolve().as_uri() + '?mode=ro', uri=True, check_same_thread=False)
    return sqlite3.connect(str(path), check_same_thread=False)


class KeyframeStore:
    """Keyframe rows, PNG thumbnails and (optionally) full descriptors by keyframe id.

    Not locked: the map facade serializes calls; ``snapshot_reader`` may run in another thread.
    """

    def __init__(self, descriptor_dim: int) -> None:
        self.descriptor_dim = int(descriptor_dim)
        self._dir = Path(tempfile.mkdtemp(prefix='boq_vpr-map-'))
        self._file = self._dir / DB_FILE
        self._conn = _connect(self._file)
        # scratch data: durability comes from MapDatabase.save, not from this file
        self._conn.execute('PRAGMA journal_mode=WAL')
        self._conn.execute('PRAGMA synchronous=OFF')
        self._conn.executescript(_SCHEMA)
        self._finalizer = weakref.finalize(self, KeyframeStore._remove, self._conn, self._dir)

    @staticmethod
    def _remove(conn: sqlite3.Connection, folder: Path) -> None:
        with contextlib.suppress(sqlite3.Error):
            conn.close()
        shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        """Delete the scratch file (the store is unusable afterwards)."""
        self._finalizer()

    # ---------------------------------------------------------------- writing
    def add(self, rows: Sequence[tuple], pngs: Sequence[tuple[int, bytes]],
            vectors: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Insert keyframe rows, ``(id, png)`` thumbnails and ``(ids, [N, D] float32)`` vectors in one transaction."""
        with self._conn:
            self._conn.executemany(f'INSERT INTO keyframes ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)', rows)
            if pngs:
                self._conn.executemany('INSERT INTO thumbnails (id, png) VALUES (?, ?)', pngs)
            if vectors is not None:
                ids, x = vectors
                x = np.ascontiguousarray(x, np.float32)
                self._conn.executemany('INSERT INTO vectors (id, v) VALUES (?, ?)',
                                       [(int(i), x[j].tobytes()) for j, i in enumerate(ids.tolist())])

    def add_thumbnails(self, pngs: Sequence[tuple[int, bytes]]) -> None:
        with self._conn:
            self._conn.executemany('INSERT INTO thumbnails (id, png) VALUES (?, ?)', pngs)

    def delete(self, ids: Iterable[int]) -> None:
        rows = [(int(i),) for i in ids]
        with self._conn:
            for table in ('keyframes', 'thumbnails', 'vectors'):
                self._conn.executemany(f'DELETE FROM {table} WHERE id = ?', rows)

    def clear(self) -> None:
        with self._conn:
            for table in ('keyframes', 'thumbnails', 'vectors'):
                self._conn.execute(f'DELETE FROM {table}')

    # ---------------------------------------------------------------- reading
    def count(self, table: str = 'keyframes') -> int:
        return int(self._conn.execute(f'SELECT COUNT(*) FROM {table}').fetchone()[0])

    def ids(self, session: str) -> list[int]:
        return [r[0] for r in self._conn.execute('SELECT id FROM keyframes WHERE session = ?', (session,))]

    def keyframe(self, id: int) -> Keyframe | None:
        row = self._conn.execute(f'SELECT {_COLUMNS} FROM keyframes WHERE id = ?', (int(id),)).fetchone()
        return _row_to_keyframe(row) if row is not None else None

    def all_keyframes(self) -> list[Keyframe]:
        return [_row_to_keyframe(r) for r in self._conn.execute(f'SELECT {_COLUMNS} FROM keyframes ORDER BY id')]

    def keyframes_between(self, start_ns: int, end_ns: int) -> list[Keyframe]:
        rows = self._conn.execute(f'SELECT {_COLUMNS} FROM keyframes WHERE stamp_ns BETWEEN ? AND ? '
                                  'ORDER BY stamp_ns, id', (int(start_ns), int(end_ns))).fetchall()
        return [_row_to_keyframe(r) for r in rows]

    def nearest_in_time(self, stamp_ns: int, session: str | None = None) -> Keyframe | None:
        where, args = ('AND session = ?', (session,)) if session is not None else ('', ())
        best = None
        for op, order in (('<=', 'DESC'), ('>=', 'ASC')):
            row = self._conn.execute(f'SELECT {_COLUMNS} FROM keyframes WHERE stamp_ns {op} ? {where} '
                                     f'ORDER BY stamp_ns {order} LIMIT 1', (int(stamp_ns), *args)).fetchone()
            if row is not None:
                kf = _row_to_keyframe(row)
                if best is None or abs(kf.stamp_ns - stamp_ns) < abs(best.stamp_ns - stamp_ns):
                    best = kf
        return best

    def first_id_at_or_after(self, stamp_ns: int, session: str | None = None) -> int | None:
        where, args = ('AND session = ?', (session,)) if session is not None else ('', ())
        row = self._conn.execute(f'SELECT MIN(id) FROM keyframes WHERE stamp_ns >= ? {where}',
                                 (int(stamp_ns), *args)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def stamps(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(ids, stamps, session labels, positions ``[n, 3]``: NaN where unknown) of the ids in [lo, hi)."""
        rows = self._conn.execute('SELECT id, stamp_ns, session, px, py, pz FROM keyframes WHERE id >= ? AND id < ? '
                                  'ORDER BY id', (int(lo), int(hi))).fetchall()
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        stamps = np.fromiter((r[1] for r in rows), np.int64, len(rows))
        positions = np.array([r[3:] if r[3] is not None else (np.nan,) * 3 for r in rows], np.float64).reshape(-1, 3)
        return ids, stamps, np.array([r[2] for r in rows], dtype=object), positions

    def sessions(self) -> dict[str, int]:
        rows = self._conn.execute('SELECT session, COUNT(*) FROM keyframes GROUP BY session').fetchall()
        return {s: int(c) for s, c in rows}

    def thumbnail_png(self, id: int) -> bytes | None:
        row = self._conn.execute('SELECT png FROM thumbnails WHERE id = ?', (int(id),)).fetchone()
        return None if row is None else row[0]

    def thumbnail_pngs(self, ids: Iterable[int]) -> dict[int, bytes]:
        out = {}
        for i in ids:
            png = self.thumbnail_png(i)
            if png is not None:
                out[int(i)] = png
        return out

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Full descriptors ``[N, D]`` of ``ids`` (KeyError naming ids without one)."""
        ids = np.asarray(ids, np.int64)
        out = np.empty((ids.size, self.descriptor_dim), np.float32)
        found = {}
        lst = ids.tolist()
        for s in range(0, len(lst), 500):   # SQLite's limit on bound parameters
            part = lst[s:s + 500]
            q = f'SELECT id, v FROM vectors WHERE id IN ({",".join("?" * len(part))})'
            found.update(self._conn.execute(q, part).fetchall())
        missing = [i for i in lst if i not in found]
        if missing:
            raise KeyError(f'no stored descriptor for keyframe(s) {missing[:10]}')
        for j, i in enumerate(lst):
            out[j] = np.frombuffer(found[i], np.float32)
        return out

    # ---------------------------------------------------------------- persistence
    @contextlib.contextmanager
    def snapshot_reader(self) -> Iterator[sqlite3.Connection]:
        """Open a connection reading the store as it is when this is entered (a WAL read transaction).

        Enter it under the map lock, then copy from it (``copy_to``) outside the lock.
        """
        reader = _connect(self._file, readonly=True)
        try:
            reader.execute('BEGIN')
            reader.execute('SELECT COUNT(*) FROM keyframes').fetchone()   # starts the read transaction
            yield reader
        finally:
            with contextlib.suppress(sqlite3.Error):
                reader.rollback()
            reader.close()

    @staticmethod
    def copy_to(reader: sqlite3.Connection, path: Path) -> None:
        """Write the snapshot ``reader`` sees to a new SQLite file ``path``."""
        dst = sqlite3.connect(str(path))
        try:
            reader.backup(dst)
            dst.execute('PRAGMA journal_mode=DELETE')   # a plain file: readable without -wal/-shm files
        finally:
            dst.close()

    def load_from(self, path: Path) -> int:
        """Replace the contents with a saved ``keyframes.sqlite``; returns its keyframe count."""
        src = None
        try:
            src = _connect(path, readonly=True)
            src.backup(self._conn)
            self._conn.execute('PRAGMA journal_mode=WAL')
            self._conn.executescript(_SCHEMA)   # maps saved before the vectors table get an empty one
            return self.count()
        except sqlite3.Error as err:
            raise MapError(f'{path} is not a readable SQLite database: {err}') from err
        finally:
            if src is not None:
                src.close()
