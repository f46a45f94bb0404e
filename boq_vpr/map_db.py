"""The map database: keyframe descriptors in a FAISS index plus keyframe metadata, on disk as a directory.

A map directory holds ``manifest.json`` (format version, model fingerprint, descriptor size, index
type and options, count, checksums of the data files) and one ``data-NNNNNN/`` folder with
``index.faiss`` (FAISS's own format), ``keyframes.sqlite`` (ids, stamps, poses, frames, sources,
sessions, PNG thumbnails), ``ids.npy`` and, while a trainable index still collects its training
set, ``pending.npy``. Nothing is pickled. Saving writes a new data folder and then replaces the
manifest in one ``os.replace``, so a crash at any point leaves the previous map readable.

Scores are inner products of L2-normalized descriptors, i.e. cosine similarities (for ``pca``, the
cosine in the reduced space; for compressed indexes, its approximation).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import faiss
import numpy as np

from . import __version__
from .errors import ConfigError, MapError

log = logging.getLogger(__name__)

FORMAT = 'boq_vpr-map'
FORMAT_VERSION = 1
MANIFEST = 'manifest.json'
_INDEX_FILE = 'index.faiss'
_DB_FILE = 'keyframes.sqlite'
_IDS_FILE = 'ids.npy'
_PENDING_FILE = 'pending.npy'
# Queries x map vectors scored at once by the exact path (bounds the temporary score matrix).
_SCORE_BLOCK = 1 << 25
# From this many multiply-adds on, a few queries on a flat index go through numpy's BLAS (its
# threads pay off on long scans); below, through FAISS on one thread (bench map: flat_single_query).
_BLAS_MIN_WORK = 1 << 26


@contextlib.contextmanager
def _omp_threads(threads: int):
    """FAISS's OpenMP threads for the calling thread (0 = leave them alone)."""
    if threads <= 0:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


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


# --------------------------------------------------------------------------------------------
# Index types: a plain registry name -> constructor (descriptor_dim, options) -> faiss.Index.
# Each constructor gets the dimension after the optional PCA reduction.

def _flat(d: int, o: dict) -> faiss.Index:
    return faiss.IndexFlatIP(d)


def _fp16(d: int, o: dict) -> faiss.Index:
    return faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)


def _hnsw(d: int, o: dict) -> faiss.Index:
    index = faiss.IndexHNSWFlat(d, int(o['hnsw_m']), faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = int(o['ef_construction'])
    index.hnsw.efSearch = int(o['ef_search'])
    return index


def _ivfpq(d: int, o: dict) -> faiss.Index:
    m, nbits, nlist = int(o['pq_m']), int(o['pq_nbits']), int(o['nlist'])
    if d % m:
        raise ConfigError(f'ivfpq: pq_m={m} must divide the (reduced) descriptor size {d}; '
                          f'choose a divisor such as {", ".join(str(x) for x in (8, 16, 32, 64) if d % x == 0)}')
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()  # the IVF index now owns and frees its quantizer
    index.nprobe = int(o['nprobe'])
    return index


INDEX_TYPES: dict[str, Callable[[int, dict], faiss.Index]] = {
    'flat': _flat,     # exact inner product, float32 (default)
    'pca': _flat,      # PCA reduction (trained) + L2 renormalization, then exact inner product
    'fp16': _fp16,     # exact search over float16-stored vectors (half the memory)
    'hnsw': _hnsw,     # graph search (approximate), float32 storage
    'ivfpq': _ivfpq,   # inverted lists + product quantization (trained, compressed)
}

# Options each index type accepts, with defaults. ``pca_dim`` (0 = off) works with every type.
_COMMON_OPTIONS = {'pca_dim': 0, 'train_size': 0}
INDEX_DEFAULTS: dict[str, dict] = {
    'flat': {},
    'pca': {'pca_dim': 1024},
    'fp16': {},
    'hnsw': {'hnsw_m': 32, 'ef_construction': 80, 'ef_search': 128},
    'ivfpq': {'nlist': 256, 'pq_m': 64, 'pq_nbits': 8, 'nprobe': 16},
}


def resolve_index_options(index_type: str, descriptor_dim: int, options: dict) -> dict:
    """Defaults merged with ``options``; ConfigError naming unknown types, keys or bad values."""
    if index_type not in INDEX_TYPES:
        raise ConfigError(f'unknown index type {index_type!r}; valid: {", ".join(INDEX_TYPES)}')
    opts = {**_COMMON_OPTIONS, **INDEX_DEFAULTS[index_type]}
    unknown = sorted(set(options) - set(opts))
    if unknown:
        raise ConfigError(f'index type {index_type!r} has no option(s) {", ".join(unknown)}; '
                          f'valid: {", ".join(sorted(opts))}')
    for key, value in options.items():
        try:
            opts[key] = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f'index option {key} must be an integer, got {value!r}') from None
    for key, value in opts.items():
        if value < 0 or (key not in _COMMON_OPTIONS and value == 0):
            raise ConfigError(f'index option {key} must be positive, got {value}')
    if index_type == 'pca' and opts['pca_dim'] == 0:
        raise ConfigError('index type pca needs pca_dim > 0')
    if opts['pca_dim'] >= descriptor_dim:
        if index_type == 'pca':
            raise ConfigError(f'pca_dim {opts["pca_dim"]} must be smaller than the descriptor size {descriptor_dim}')
        raise ConfigError(f'pca_dim {opts["pca_dim"]} must be 0 (off) or smaller than {descriptor_dim}')
    if index_type == 'ivfpq' and opts['pq_nbits'] > 16:
        raise ConfigError(f'pq_nbits must be <= 16, got {opts["pq_nbits"]}')
    need = min_train_size(index_type, opts)
    if 0 < opts['train_size'] < need:
        raise ConfigError(f'train_size {opts["train_size"]} is too small: index type {index_type} with these options '
                          f'trains on at least {need} vectors')
    return opts


def min_train_size(index_type: str, opts: dict) -> int:
    """How many vectors the index needs before it can be trained (0 = needs no training)."""
    need = 0
    if opts['pca_dim']:
        need = max(need, opts['pca_dim'])
    if index_type == 'ivfpq':
        need = max(need, opts['nlist'], 1 << opts['pq_nbits'])
    return need


def _default_train_size(index_type: str, opts: dict) -> int:
    need = min_train_size(index_type, opts)
    if opts['pca_dim']:  # twice the components for a stable estimate of them
        need = max(need, 2 * opts['pca_dim'])
    if index_type == 'ivfpq':  # FAISS's k-means wants ~39 points per centroid
        need = max(need, 39 * opts['nlist'], 39 * (1 << opts['pq_nbits']))
    return need


def _index_bytes(index: faiss.Index) -> int:
    """Bytes of the arrays that make up a FAISS index (vectors, codes, graph, lists, transforms)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        total = _index_bytes(index.index)
        for i in range(index.chain.size()):
            vt = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(vt, faiss.LinearTransform):
                total += 4 * (vt.A.size() + vt.b.size())
            if isinstance(vt, faiss.PCAMatrix):
                total += 4 * (vt.PCAMat.size() + vt.mean.size() + vt.eigenvalues.size())
        return total
    if isinstance(index, faiss.IndexHNSW):
        h = index.hnsw
        graph = 4 * h.neighbors.size() + 4 * h.levels.size() + 8 * h.offsets.size() + 8 * h.assign_probas.size()
        return graph + _index_bytes(index.storage)
    if isinstance(index, faiss.IndexIVF):
        invlists = faiss.extract_index_ivf(index).invlists
        codes = sum(invlists.list_size(i) for i in range(invlists.nlist)) * (invlists.code_size + 8)
        extra = 4 * index.pq.centroids.size() if isinstance(index, faiss.IndexIVFPQ) else 0
        return codes + extra + _index_bytes(index.quantizer)
    if isinstance(index, faiss.IndexFlatCodes):   # flat, scalar quantizer, ...
        return index.codes.size()
    return index.ntotal * index.d * 4              # an estimate for other types


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 22), b''):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, 'rb+') as f:
        os.fsync(f.fileno())


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
"""
_COLUMNS = 'id, stamp_ns, px, py, pz, qx, qy, qz, qw, frame_id, source, session'


def _row_to_keyframe(row: tuple) -> Keyframe:
    kid, stamp, px, py, pz, qx, qy, qz, qw, frame_id, source, session = row
    position = (px, py, pz) if px is not None else None
    orientation = (qx, qy, qz, qw) if qx is not None else None
    return Keyframe(int(kid), int(stamp), position, orientation, frame_id, source, session)


def _keyframe_row(kid: int, kf: Keyframe) -> tuple:
    p = kf.position
    q = kf.orientation
    if p is not None and len(p) != 3:
        raise MapError(f'keyframe position must have 3 values (x, y, z), got {p!r}')
    if q is not None and len(q) != 4:
        raise MapError(f'keyframe orientation must be a quaternion (x, y, z, w), got {q!r}')
    p = tuple(float(v) for v in p) if p is not None else (None, None, None)
    q = tuple(float(v) for v in q) if q is not None else (None, None, None, None)
    return (kid, int(kf.stamp_ns), *p, *q, str(kf.frame_id), str(kf.source), str(kf.session))


def make_thumbnail(image: np.ndarray, max_side: int = 160) -> np.ndarray:
    """A grayscale uint8 copy of ``image`` (RGB or gray) no larger than ``max_side`` pixels."""
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
    """A small grayscale PNG of ``image`` (RGB or gray uint8) for geometric verification."""
    ok, buf = cv2.imencode('.png', make_thumbnail(image, max_side))
    if not ok:
        raise MapError('thumbnail could not be encoded as PNG')
    return buf.tobytes()


class MapDatabase:
    """Keyframe descriptors (FAISS) + metadata (SQLite, in memory until saved). Thread-safe.

    ``index_type``: one of ``INDEX_TYPES`` (flat, pca, fp16, hnsw, ivfpq); ``index_options``: see
    ``INDEX_DEFAULTS`` plus ``pca_dim`` (reduce by PCA first, 0 = off) and ``train_size`` (vectors
    collected before a trainable index trains itself; 0 = a sensible default). Until then, added
    vectors are searched exactly and saved as they are.
    """

    def __init__(self, descriptor_dim: int, fingerprint: str, index_type: str = 'flat',
                 thumbnail_size: int = 160, **index_options) -> None:
        if int(descriptor_dim) <= 0:
            raise ConfigError(f'descriptor_dim must be positive, got {descriptor_dim}')
        self.descriptor_dim = int(descriptor_dim)
        self.fingerprint = str(fingerprint)
        self.index_type = index_type
        self.index_options = resolve_index_options(index_type, self.descriptor_dim, index_options)
        self.thumbnail_size = int(thumbnail_size)
        self._lock = threading.RLock()
        self._index = self._new_index()
        # Position in the index -> keyframe id (ascending), for index types labelled by position;
        # IVF indexes are labelled by keyframe id directly.
        self._ids = np.zeros(0, np.int64)
        self._pending = np.zeros((0, self.descriptor_dim), np.float32)
        self._next_id = 0
        self._conn = sqlite3.connect(':memory:', check_same_thread=False)
        self._conn.executescript(_SCHEMA)
        self._warned_norm = False
        self.path: Path | None = None
        # Threads of a search: 0 = automatic (one FAISS thread for up to 4 queries, or numpy's
        # BLAS for long exact scans; the libraries' defaults for batches); 1 = FAISS on one
        # thread; N > 1 = FAISS with N OpenMP threads, numpy's BLAS for flat indexes.
        self.search_threads = 0

    # ---------------------------------------------------------------- construction helpers
    def _new_index(self) -> faiss.Index:
        o = self.index_options
        d = o['pca_dim'] or self.descriptor_dim
        inner = INDEX_TYPES[self.index_type](d, o)
        if not o['pca_dim']:
            return inner
        pca = faiss.PCAMatrix(self.descriptor_dim, d, 0.0, False)
        chain = faiss.IndexPreTransform(inner)
        chain.prepend_transform(faiss.NormalizationTransform(d, 2.0))
        chain.prepend_transform(pca)  # the Python wrapper keeps the parts alive (no own_fields)
        return chain

    @property
    def _labels_are_ids(self) -> bool:
        return self.index_type == 'ivfpq'

    def _core(self) -> faiss.Index:
        """The index after the optional PCA transform."""
        if isinstance(self._index, faiss.IndexPreTransform):
            return faiss.downcast_index(self._index.index)
        return self._index

    @property
    def is_trained(self) -> bool:
        """False while a trainable index collects its training set (see ``train``)."""
        return bool(self._index.is_trained)

    @property
    def train_size(self) -> int:
        return self.index_options['train_size'] or _default_train_size(self.index_type, self.index_options)

    # ---------------------------------------------------------------- basic queries
    def __len__(self) -> int:
        with self._lock:
            return int(self._ids.size)

    @property
    def next_id(self) -> int:
        return self._next_id

    def ids(self) -> np.ndarray:
        """Keyframe ids in the map, ascending."""
        with self._lock:
            return self._ids.copy()

    def __repr__(self) -> str:
        return (f'MapDatabase({len(self)} keyframes, {self.descriptor_dim}-D, {self.index_type}, '
                f'fingerprint {self.fingerprint!r})')

    # ---------------------------------------------------------------- add
    def _check_descriptors(self, descriptors: np.ndarray) -> np.ndarray:
        x = np.asarray(descriptors)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.descriptor_dim:
            raise MapError(f'descriptors must be [N, {self.descriptor_dim}] or [{self.descriptor_dim}], '
                           f'got shape {tuple(np.shape(descriptors))}; the map holds {self.descriptor_dim}-D '
                           f'descriptors of model {self.fingerprint}')
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise MapError('descriptors contain NaN or infinity; check the encoder output')
        norms = np.linalg.norm(x, axis=1)
        if np.any(norms < 1e-12):
            raise MapError('a descriptor is all zeros and cannot be normalized; check the encoder output')
        if np.any(np.abs(norms - 1.0) > 1e-3):
            if not self._warned_norm:
                log.warning('descriptors are not L2-normalized (norms %.4g..%.4g); normalizing them so that scores '
                            'are cosine similarities', norms.min(), norms.max())
                self._warned_norm = True
            x = x / norms[:, None]
        return x

    def add(self, descriptors: np.ndarray, keyframes: Sequence[Keyframe],
            thumbnails: Sequence[np.ndarray | None] | None = None) -> list[int]:
        """Add descriptors ``[N, D]`` (or one ``[D]``) with their keyframes; returns the new ids.

        ``thumbnails`` (optional, one image or None per keyframe) are stored as small grayscale
        PNGs for geometric verification.
        """
        x = self._check_descriptors(descriptors)
        if isinstance(keyframes, Keyframe):
            keyframes = [keyframes]
        if len(keyframes) != x.shape[0]:
            raise MapError(f'{x.shape[0]} descriptors but {len(keyframes)} keyframes; give one keyframe per descriptor')
        if thumbnails is not None and len(thumbnails) != x.shape[0]:
            raise MapError(f'{x.shape[0]} descriptors but {len(thumbnails)} thumbnails; give one (or None) each')
        pngs = [encode_thumbnail(t, self.thumbnail_size) if t is not None else None
                for t in (thumbnails or [None] * x.shape[0])]
        with self._lock:
            ids = np.arange(self._next_id, self._next_id + x.shape[0], dtype=np.int64)
            rows = [_keyframe_row(int(i), kf) for i, kf in zip(ids, keyframes)]
            self._add_vectors(x, ids)
            with self._conn:
                self._conn.executemany(f'INSERT INTO keyframes ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)', rows)
                self._conn.executemany('INSERT INTO thumbnails (id, png) VALUES (?, ?)',
                                       [(int(i), p) for i, p in zip(ids, pngs) if p is not None])
            self._next_id += x.shape[0]
            return ids.tolist()

    def _add_vectors(self, x: np.ndarray, ids: np.ndarray) -> None:
        if not self._index.is_trained:
            before = self._pending, self._ids
            self._pending = np.concatenate([self._pending, x]) if self._pending.size else x.copy()
            self._ids = np.concatenate([self._ids, ids])
            if self._pending.shape[0] >= self.train_size:
                try:
                    self._train_and_flush()
                except BaseException:
                    self._pending, self._ids = before   # the add fails whole: no id without a keyframe row
                    raise
            return
        if self._labels_are_ids:
            self._index.add_with_ids(x, ids)
        else:
            self._index.add(x)
        self._ids = np.concatenate([self._ids, ids])

    def set_search_options(self, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Change the speed/recall trade-off of approximate indexes at run time (saved with the map):
        ``ef_search`` for hnsw, ``nprobe`` for ivfpq."""
        with self._lock:
            for key, value in (('ef_search', ef_search), ('nprobe', nprobe)):
                if value is None:
                    continue
                if key not in self.index_options:
                    raise ConfigError(f'{key} does not apply to index type {self.index_type}')
                if int(value) < 1:
                    raise ConfigError(f'{key} must be >= 1, got {value}')
                self.index_options[key] = int(value)

    def train(self) -> None:
        """Train the index now on the vectors collected so far (MapError if they are too few)."""
        with self._lock:
            if self._index.is_trained:
                return
            self._train_and_flush()

    def _train_and_flush(self) -> None:
        x = self._pending
        need = min_train_size(self.index_type, self.index_options)
        if x.shape[0] < need:
            raise MapError(f'index type {self.index_type} with options {self.index_options} needs at least {need} '
                           f'vectors to train, the map has {x.shape[0]}; add more keyframes, lower pca_dim/nlist/'
                           f'pq_nbits, or use index type flat or fp16 (no training)')
        log.info('training %s index on %d vectors', self.index_type, x.shape[0])
        if isinstance(self._index, faiss.IndexPreTransform):
            for i in range(self._index.chain.size()):
                vt = faiss.downcast_VectorTransform(self._index.chain.at(i))
                if isinstance(vt, faiss.PCAMatrix) and not vt.is_trained:
                    # FAISS's PCA eigendecomposes a matrix of side min(vectors, dimension): cubic
                    # time, minutes at 16384-D. 4x the components, spread over the map, suffice.
                    m = min(x.shape[0], max(4 * vt.d_out, 1024))
                    vt.train(np.ascontiguousarray(x[np.linspace(0, x.shape[0] - 1, m).astype(np.int64)]))
                    vt.PCAMat.clear()  # the full eigenvector matrix is only used during training
        self._index.train(x)  # whatever is still untrained (the index behind the PCA)
        ids = self._ids
        if self._labels_are_ids:
            self._index.add_with_ids(x, ids)
        else:
            self._index.add(x)
        self._pending = np.zeros((0, self.descriptor_dim), np.float32)

    # ---------------------------------------------------------------- search
    def search(self, queries: np.ndarray, k: int, id_below: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` keyframes per query: (scores ``[N, k]`` float32, ids ``[N, k]`` int64), best first.

        Rows are padded with score -inf and id -1 when fewer than ``k`` keyframes qualify.
        ``id_below`` restricts the search to keyframes with ``id < id_below`` (an exclusion window
        over the most recent keyframes).
        """
        q = self._check_descriptors(queries)
        k = int(k)
        if k <= 0:
            raise ConfigError(f'k must be positive, got {k}')
        with self._lock:
            n = q.shape[0]
            scores = np.full((n, k), -np.inf, np.float32)
            labels = np.full((n, k), -1, np.int64)
            limit = self._ids.size if id_below is None else int(np.searchsorted(self._ids, id_below))
            if limit == 0:
                return scores, labels
            # A few queries run on one thread unless search_threads says otherwise: FAISS splits a
            # search over its queries, so more threads cannot help one query, and waking idle
            # OpenMP threads costs more than they save on a machine shared with a SLAM stack
            # (2-30x slower measured on a busy machine, see bench map).
            few = n <= 4
            threads = self.search_threads or (1 if few else 0)
            if self._pending.shape[0]:
                return self._exact_scores(self._pending, q, k, limit, self._ids)
            core = self._core()
            if isinstance(core, faiss.IndexFlat):
                work = n * limit * core.d
                if not few or threads > 1 or (self.search_threads == 0 and work >= _BLAS_MIN_WORK):
                    # numpy over FAISS's own storage (no copy): one BLAS sgemv/sgemm. FAISS scans
                    # the vectors one by one for a few queries (BLAS only from
                    # distance_compute_blas_threshold queries on, never with an id selector),
                    # which is slower on long scans than a threaded BLAS product.
                    xq = self._transform(q)
                    xb = faiss.rev_swig_ptr(core.get_xb(), core.ntotal * core.d).reshape(core.ntotal, core.d)
                    return self._exact_scores(xb, xq, k, limit, self._ids)
            with _omp_threads(threads):
                return self._faiss_search(q, k, limit, id_below)

    @staticmethod
    def _exact_scores(xb: np.ndarray, q: np.ndarray, k: int, limit: int,
                         ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = q.shape[0]
        kk = min(k, limit)
        scores = np.full((n, k), -np.inf, np.float32)
        labels = np.full((n, k), -1, np.int64)
        xb = xb[:limit]
        step = max(1, _SCORE_BLOCK // max(limit, 1))
        for s in range(0, n, step):
            block = q[s:s + step] @ xb.T if n > 1 else (xb @ q[0])[None]
            if kk < limit:
                part = np.argpartition(-block, kk - 1, axis=1)[:, :kk]
            else:
                part = np.broadcast_to(np.arange(limit), (block.shape[0], limit))
            top = np.take_along_axis(block, part, axis=1)
            order = np.argsort(-top, axis=1, kind='stable')
            scores[s:s + step, :kk] = np.take_along_axis(top, order, axis=1)
            labels[s:s + step, :kk] = ids[np.take_along_axis(part, order, axis=1)]
        return scores, labels

    def _transform(self, x: np.ndarray) -> np.ndarray:
        """Descriptors as the core index sees them (after the optional PCA + normalization)."""
        if not isinstance(self._index, faiss.IndexPreTransform):
            return x
        for i in range(self._index.chain.size()):
            x = self._index.chain.at(i).apply(x)
        return x

    def _search_params(self, selector, k: int) -> faiss.SearchParameters:
        core = self._core()
        o = self.index_options
        if isinstance(core, faiss.IndexIVF):
            params = faiss.SearchParametersIVF(sel=selector, nprobe=o['nprobe'])
        elif isinstance(core, faiss.IndexHNSW):
            # HNSW returns at most efSearch results
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(o['ef_search'], k))
        else:
            params = faiss.SearchParameters(sel=selector)
        if core is not self._index:
            outer = faiss.SearchParametersPreTransform(index_params=params)
            outer.__dict__['_keep'] = params  # the inner object must outlive the call
            return outer
        return params

    def _faiss_search(self, q: np.ndarray, k: int, limit: int, id_below: int | None) -> tuple[np.ndarray, np.ndarray]:
        selector = None
        if limit < self._ids.size:
            selector = faiss.IDSelectorRange(0, int(id_below) if self._labels_are_ids else limit)
        params = self._search_params(selector, k)
        d, lab = self._index.search(q, k, params=params)
        valid = lab >= 0
        if not self._labels_are_ids:
            lab = np.where(valid, self._ids[np.clip(lab, 0, max(self._ids.size - 1, 0))], -1)
        d = np.where(valid, d, -np.inf).astype(np.float32)
        return d, lab.astype(np.int64)

    # ---------------------------------------------------------------- metadata
    def keyframe(self, id: int) -> Keyframe:
        """The keyframe with this id (KeyError if the map has none)."""
        with self._lock:
            row = self._conn.execute(f'SELECT {_COLUMNS} FROM keyframes WHERE id = ?', (int(id),)).fetchone()
        if row is None:
            raise KeyError(f'no keyframe with id {id} in the map ({len(self)} keyframes)')
        return _row_to_keyframe(row)

    def keyframes(self, ids: Iterable[int] | None = None) -> list[Keyframe]:
        """Keyframes by id (all of them, by id, when ``ids`` is None)."""
        with self._lock:
            if ids is None:
                rows = self._conn.execute(f'SELECT {_COLUMNS} FROM keyframes ORDER BY id').fetchall()
                return [_row_to_keyframe(r) for r in rows]
        return [self.keyframe(i) for i in ids]

    def keyframes_between(self, start_ns: int, end_ns: int) -> list[Keyframe]:
        """Keyframes with ``start_ns <= stamp_ns <= end_ns``, by time."""
        with self._lock:
            rows = self._conn.execute(f'SELECT {_COLUMNS} FROM keyframes WHERE stamp_ns BETWEEN ? AND ? '
                                      'ORDER BY stamp_ns, id', (int(start_ns), int(end_ns))).fetchall()
        return [_row_to_keyframe(r) for r in rows]

    def nearest_in_time(self, stamp_ns: int, session: str | None = None) -> Keyframe | None:
        """The keyframe closest in time to ``stamp_ns`` (optionally within one session)."""
        where, args = ('AND session = ?', (session,)) if session is not None else ('', ())
        best = None
        with self._lock:
            for op, order in (('<=', 'DESC'), ('>=', 'ASC')):
                row = self._conn.execute(f'SELECT {_COLUMNS} FROM keyframes WHERE stamp_ns {op} ? {where} '
                                         f'ORDER BY stamp_ns {order} LIMIT 1', (int(stamp_ns), *args)).fetchone()
                if row is not None:
                    kf = _row_to_keyframe(row)
                    if best is None or abs(kf.stamp_ns - stamp_ns) < abs(best.stamp_ns - stamp_ns):
                        best = kf
        return best

    def first_id_at_or_after(self, stamp_ns: int, session: str | None = None) -> int | None:
        """Smallest keyframe id whose stamp is >= ``stamp_ns`` (None if there is none)."""
        where, args = ('AND session = ?', (session,)) if session is not None else ('', ())
        with self._lock:
            row = self._conn.execute(f'SELECT MIN(id) FROM keyframes WHERE stamp_ns >= ? {where}',
                                     (int(stamp_ns), *args)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def sessions(self) -> dict[str, int]:
        """Session name -> number of keyframes."""
        with self._lock:
            rows = self._conn.execute('SELECT session, COUNT(*) FROM keyframes GROUP BY session').fetchall()
        return {s: int(c) for s, c in rows}

    def thumbnail(self, id: int) -> np.ndarray | None:
        """The stored grayscale thumbnail of a keyframe, or None if it has none."""
        with self._lock:
            row = self._conn.execute('SELECT png FROM thumbnails WHERE id = ?', (int(id),)).fetchone()
        if row is None:
            return None
        img = cv2.imdecode(np.frombuffer(row[0], np.uint8), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise MapError(f'thumbnail of keyframe {id} cannot be decoded (corrupt map database)')
        return img

    def descriptors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored descriptors ``[N, D]`` of these keyframes (reconstructed, hence approximate, for
        compressed index types)."""
        with self._lock:
            ids = np.asarray(ids, np.int64)
            pos = np.searchsorted(self._ids, ids)
            bad = (pos >= self._ids.size) | (self._ids[np.minimum(pos, max(self._ids.size - 1, 0))] != ids) \
                if self._ids.size else np.ones(ids.shape, bool)
            if np.any(bad):
                raise KeyError(f'no keyframe(s) with id {ids[bad][:10].tolist()} in the map')
            if self._pending.shape[0]:
                return self._pending[pos].copy()
            if not ids.size:
                return np.zeros((0, self.descriptor_dim), np.float32)
            if self._labels_are_ids:
                self._ensure_direct_map()
                return self._index.reconstruct_batch(ids)
            return self._index.reconstruct_batch(pos.astype(np.int64))

    def _ensure_direct_map(self) -> None:
        core = self._core()
        if isinstance(core, faiss.IndexIVF) and core.direct_map.type != faiss.DirectMap.Hashtable:
            core.set_direct_map_type(faiss.DirectMap.Hashtable)

    # ---------------------------------------------------------------- removal and merge
    def remove(self, ids: Iterable[int]) -> int:
        """Remove keyframes by id; returns how many were removed."""
        with self._lock:
            ids = np.unique(np.asarray(list(ids), np.int64))
            mask = np.isin(self._ids, ids)
            count = int(mask.sum())
            if count == 0:
                return 0
            if self._pending.shape[0]:
                self._pending = self._pending[~mask]
            elif self._labels_are_ids:
                self._index.remove_ids(faiss.IDSelectorBatch(self._ids[mask]))
            else:
                self._remove_positions(np.flatnonzero(mask))
            removed = self._ids[mask]
            self._ids = self._ids[~mask]
            with self._conn:
                self._conn.executemany('DELETE FROM keyframes WHERE id = ?', [(int(i),) for i in removed])
                self._conn.executemany('DELETE FROM thumbnails WHERE id = ?', [(int(i),) for i in removed])
            log.info('removed %d keyframes', count)
            return count

    def _remove_positions(self, positions: np.ndarray) -> None:
        core = self._core()
        if isinstance(core, faiss.IndexHNSW):
            # HNSW graphs cannot delete nodes: rebuild the graph from the stored vectors (exact copies).
            keep = np.setdiff1d(np.arange(core.ntotal), positions)
            vectors = core.reconstruct_n(0, core.ntotal)[keep] if keep.size else None
            core.reset()
            if vectors is not None:
                core.add(vectors)
            self._index.ntotal = core.ntotal
            return
        self._index.remove_ids(faiss.IDSelectorBatch(positions.astype(np.int64)))

    def remove_session(self, session: str) -> int:
        """Remove every keyframe of a session; returns how many."""
        with self._lock:
            rows = self._conn.execute('SELECT id FROM keyframes WHERE session = ?', (session,)).fetchall()
        if not rows:
            log.warning('no keyframes of session %r to remove; sessions: %s', session, self.sessions())
            return 0
        return self.remove(r[0] for r in rows)

    def merge(self, other: 'MapDatabase', session: str | None = None, chunk: int = 4096) -> dict[int, int]:
        """Append another map of the same model (multi-session); returns its id -> new id.

        ``session`` renames the other map's sessions. Descriptors are taken from the other index
        (exact for flat, fp16 and hnsw; reconstructions for pca and ivfpq, which are re-encoded).
        """
        if other.fingerprint != self.fingerprint or other.descriptor_dim != self.descriptor_dim:
            raise MapError(f'cannot merge a map of model {other.fingerprint} ({other.descriptor_dim}-D) into one of '
                           f'model {self.fingerprint} ({self.descriptor_dim}-D); rebuild it with the same model')
        if other is self:
            raise MapError('cannot merge a map into itself')
        lossy = other.index_type in ('pca', 'ivfpq') or other.index_options['pca_dim']
        if lossy and len(other):
            log.warning('merging a %s map: its descriptors are reconstructions and are re-encoded (approximate)',
                        other.index_type)
        mapping: dict[int, int] = {}
        other_ids = other.ids()
        for s in range(0, other_ids.size, chunk):
            block = other_ids[s:s + chunk]
            vectors = other.descriptors(block)
            kfs = [replace(kf, session=session if session is not None else kf.session)
                   for kf in other.keyframes(block)]
            thumbs = other._thumbnail_blobs(block)
            new = self.add(vectors, kfs)
            with self._lock, self._conn:
                self._conn.executemany('INSERT INTO thumbnails (id, png) VALUES (?, ?)',
                                       [(n, thumbs[o]) for o, n in zip(block.tolist(), new) if o in thumbs])
            mapping.update(zip(block.tolist(), new))
        log.info('merged %d keyframes (%s) into the map, now %d', len(mapping), other.sessions(), len(self))
        return mapping

    def _thumbnail_blobs(self, ids: np.ndarray) -> dict[int, bytes]:
        with self._lock:
            out = {}
            for i in ids.tolist():
                row = self._conn.execute('SELECT png FROM thumbnails WHERE id = ?', (i,)).fetchone()
                if row is not None:
                    out[i] = row[0]
            return out

    def clear(self) -> None:
        """Remove every keyframe (the model, index type and options stay; ids are not reused)."""
        with self._lock:
            self._index = self._new_index()
            self._ids = np.zeros(0, np.int64)
            self._pending = np.zeros((0, self.descriptor_dim), np.float32)
            with self._conn:
                self._conn.execute('DELETE FROM keyframes')
                self._conn.execute('DELETE FROM thumbnails')

    def memory_bytes(self) -> int:
        """Bytes held by the index structures, the pending vectors and the id table (not the
        keyframe metadata or thumbnails)."""
        with self._lock:
            return int(_index_bytes(self._index) + self._ids.nbytes + self._pending.nbytes)

    # ---------------------------------------------------------------- save / load
    def manifest(self) -> dict:
        """What ``manifest.json`` records about this map (without file checksums)."""
        with self._lock:
            return {
                'format': FORMAT, 'format_version': FORMAT_VERSION, 'boq_vpr_version': __version__,
                'fingerprint': self.fingerprint, 'descriptor_dim': self.descriptor_dim,
                'index_type': self.index_type, 'index_options': dict(self.index_options),
                'count': len(self), 'next_id': self._next_id, 'trained': self.is_trained,
                'thumbnail_size': self.thumbnail_size, 'sessions': self.sessions(),
                'faiss_version': faiss.__version__,
            }

    def save(self, path: str | Path) -> None:
        """Write the map to the directory ``path`` atomically: a crash mid-save leaves the previous
        map (if any) readable."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise MapError(f'{path} exists and is not a directory; choose another map path')
        foreign = foreign_entries(path)
        if foreign and not (path / MANIFEST).exists():
            raise MapError(f'{path} holds other files ({", ".join(foreign[:3])}{", ..." if len(foreign) > 3 else ""}) '
                           f'and no {MANIFEST}; refusing to write a map into it (choose an empty or new directory)')
        path.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._save_locked(path)

    def _save_locked(self, path: Path) -> None:
        manifest = self.manifest()
        tmp = Path(tempfile.mkdtemp(prefix='.data-tmp-', dir=path))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a map is ordinary data
        try:
            files = self._write_data(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = _read_manifest_quiet(path)
        # past every data folder present, so that the live one is never the one replaced
        present = [int(c.name[5:]) for c in path.iterdir() if _DATA_DIR.fullmatch(c.name)]
        old_generation = old.get('generation', 0) if isinstance(old, dict) else 0
        generation = max([old_generation if isinstance(old_generation, int) else 0, *present]) + 1
        data_dir = f'data-{generation:06d}'
        if (path / data_dir).exists():  # leftover of an interrupted save
            shutil.rmtree(path / data_dir)
        os.rename(tmp, path / data_dir)
        _fsync_dir(path)
        manifest.update({'generation': generation, 'data_dir': data_dir, 'files': files,
                         'saved_utc': _dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')})
        fd, tmp_manifest = tempfile.mkstemp(prefix='.manifest-', suffix='.json', dir=path)
        os.chmod(tmp_manifest, 0o644)
        with os.fdopen(fd, 'w') as f:
            json.dump(manifest, f, indent=2)
            f.write('\n')
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_manifest, path / MANIFEST)  # the commit point
        _fsync_dir(path)
        self.path = path
        _remove_stale(path, keep=data_dir)
        log.info('saved map %s: %d keyframes, %s index', path, manifest['count'], self.index_type)

    def _write_data(self, folder: Path) -> dict:
        faiss.write_index(self._index, str(folder / _INDEX_FILE))
        np.save(folder / _IDS_FILE, self._ids, allow_pickle=False)
        names = [_INDEX_FILE, _IDS_FILE, _DB_FILE]
        if self._pending.shape[0]:
            np.save(folder / _PENDING_FILE, self._pending, allow_pickle=False)
            names.append(_PENDING_FILE)
        dst = sqlite3.connect(str(folder / _DB_FILE))
        try:
            self._conn.backup(dst)
        finally:
            dst.close()
        files = {}
        for name in names:
            _fsync_file(folder / name)
            files[name] = {'bytes': (folder / name).stat().st_size, 'sha256': _file_digest(folder / name)}
        _fsync_dir(folder)
        return files

    @classmethod
    def load(cls, path: str | Path, fingerprint: str | None = None,
             descriptor_dim: int | None = None) -> 'MapDatabase':
        """Read a map directory. With ``fingerprint``/``descriptor_dim`` given, a map of another model
        or size is refused (MapError naming both); a truncated or corrupt file is refused naming it."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise MapError(f'{path} is not a map: {MANIFEST} is missing (build one with `boq-vpr build-map`)')
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise MapError(f'{manifest_path} is corrupt or unreadable: {err}') from err
        if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
            raise MapError(f'{manifest_path} is not a boq_vpr map manifest')
        if manifest.get('format_version') != FORMAT_VERSION:
            raise MapError(f'{manifest_path}: map format version {manifest.get("format_version")} is not supported '
                           f'by boq_vpr {__version__} (reads version {FORMAT_VERSION}); rebuild the map')
        required = ('fingerprint', 'descriptor_dim', 'index_type', 'index_options', 'count', 'next_id',
                    'data_dir', 'files')
        missing = [k for k in required if k not in manifest]
        if missing:
            raise MapError(f'{manifest_path} lacks {", ".join(missing)}; the map is corrupt')
        try:
            m_fp, m_dim = str(manifest['fingerprint']), int(manifest['descriptor_dim'])
            files = {str(name): (int(info['bytes']), str(info['sha256'])) for name, info in manifest['files'].items()}
            if not isinstance(manifest['index_options'], dict) or not _DATA_DIR.fullmatch(str(manifest['data_dir'])):
                raise ValueError('index_options or data_dir malformed')
            int(manifest['count']), int(manifest['next_id'])
        except (TypeError, ValueError, KeyError, AttributeError) as err:
            raise MapError(f'{manifest_path} is malformed ({type(err).__name__}: {err}); the map is corrupt') from err
        problems = []
        if fingerprint is not None and fingerprint != m_fp:
            problems.append(f'model fingerprint {m_fp!r} (this encoder: {fingerprint!r})')
        if descriptor_dim is not None and int(descriptor_dim) != m_dim:
            problems.append(f'descriptor size {m_dim} (this encoder: {descriptor_dim})')
        if problems:
            raise MapError(f'map {path} was built with ' + ' and '.join(problems) +
                           '; load it with the model that built it, or rebuild the map with this model')
        data = path / manifest['data_dir']
        for name, (expected_bytes, expected_sha) in files.items():
            f = data / name
            if not f.is_file():
                raise MapError(f'{f} is missing; the map is incomplete (restore it or rebuild the map)')
            size = f.stat().st_size
            if size != expected_bytes:
                raise MapError(f'{f} is truncated or altered: {size} bytes, the manifest says {expected_bytes}; '
                               f'restore it or rebuild the map')
            if _file_digest(f) != expected_sha:
                raise MapError(f'{f} is corrupt (checksum mismatch); restore it or rebuild the map')
        db = cls(m_dim, m_fp, manifest['index_type'], thumbnail_size=manifest.get('thumbnail_size', 160),
                 **{k: v for k, v in manifest['index_options'].items()})
        try:
            db._index = faiss.read_index(str(data / _INDEX_FILE))
        except RuntimeError as err:
            raise MapError(f'{data / _INDEX_FILE} cannot be read by FAISS {faiss.__version__}: {err}') from err
        try:
            db._ids = np.load(data / _IDS_FILE, allow_pickle=False).astype(np.int64)
            if (data / _PENDING_FILE).exists():
                db._pending = np.load(data / _PENDING_FILE, allow_pickle=False).astype(np.float32)
        except (ValueError, OSError) as err:
            raise MapError(f'{data}: id or pending-vector file is corrupt: {err}') from err
        src = None
        try:
            # as_uri() percent-encodes the path: '#', '?' or '%' in a folder name would end the path
            src = sqlite3.connect((data / _DB_FILE).resolve().as_uri() + '?mode=ro', uri=True)
            src.backup(db._conn)
            count = db._conn.execute('SELECT COUNT(*) FROM keyframes').fetchone()[0]
        except sqlite3.Error as err:
            raise MapError(f'{data / _DB_FILE} is not a readable SQLite database: {err}') from err
        finally:
            if src is not None:
                src.close()
        stored = db._pending.shape[0] or db._index.ntotal
        if not (count == db._ids.size == manifest['count'] == stored):
            raise MapError(f'map {path} is inconsistent: manifest count {manifest["count"]}, {db._ids.size} ids, '
                           f'{count} keyframe rows, {stored} vectors; rebuild the map')
        db._next_id = int(manifest['next_id'])
        db.path = path
        log.info('loaded map %s: %d keyframes, %d-D, %s index', path, len(db), m_dim, db.index_type)
        return db


_DATA_DIR = re.compile(r'data-\d{6}')


def _own_entry(name: str) -> bool:
    """Entries a map directory may hold besides the manifest, interrupted saves included."""
    return bool(_DATA_DIR.fullmatch(name)) or name.startswith('.data-tmp-') or \
        (name.startswith('.manifest-') and name.endswith('.json'))


def foreign_entries(path: str | Path) -> list[str]:
    """Names in directory ``path`` that a map never writes (empty when ``path`` is a map, an
    empty or missing directory, or the leftovers of a save interrupted before its manifest)."""
    path = Path(path)
    if not path.is_dir():
        return []
    return sorted(c.name for c in path.iterdir() if c.name != MANIFEST and not _own_entry(c.name))


def _read_manifest_quiet(path: Path) -> dict | None:
    try:
        return json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _remove_stale(path: Path, keep: str) -> None:
    """Delete data folders other than the current one (old generations, interrupted saves)."""
    for child in path.iterdir():
        if child.name == keep or not child.is_dir():
            continue
        if child.name.startswith('data-') or child.name.startswith('.data-tmp-'):
            shutil.rmtree(child, ignore_errors=True)
    for child in path.glob('.manifest-*.json'):
        try:
            child.unlink()
        except OSError:
            pass
