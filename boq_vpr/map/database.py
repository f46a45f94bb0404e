"""``MapDatabase``: the map the detector, the node and the tools use, as one thread-safe object.

A facade over three parts with one job each: ``index.VectorIndex`` (FAISS index types, training,
search paths), ``store.KeyframeStore`` (keyframe metadata, thumbnails and full descriptors in
SQLite) and ``persist`` (manifest, atomic save, checks on load).

Scores are inner products of L2-normalized descriptors, i.e. cosine similarities. Trainable
indexes (``pca``, ``ivfpq``) re-score their candidates with the stored full descriptors by default
(index option ``rerank``), so their scores are exact cosines too and keep one scale before and
after training; with ``rerank=0`` they are the cosine in the reduced space (pca) or its
approximation (ivfpq), and change scale when the index trains.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

import faiss
import numpy as np

from .. import __version__
from ..errors import ConfigError, MapError
from . import persist
from .index import VectorIndex, resolve_index_options
from .store import Keyframe, KeyframeStore, decode_thumbnail, encode_thumbnail, keyframe_row, make_thumbnail

log = logging.getLogger(__name__)


class MapDatabase:
    """Keyframe descriptors (FAISS) + metadata (SQLite scratch file until saved). Thread-safe.

    ``index_type``: one of ``INDEX_TYPES`` (flat, pca, fp16, hnsw, ivfpq); ``index_options``: see
    ``INDEX_DEFAULTS`` plus ``pca_dim`` (reduce by PCA first, 0 = off), ``train_size`` (vectors
    collected before a trainable index trains itself; 0 = a sensible default) and ``rerank``
    (candidates re-scored with the full descriptors; default 64 for trainable indexes, 0 = off).
    Until trained, added vectors are searched exactly and saved as they are. With
    ``background_training`` (slam mode) the training runs in a thread while adds and exact
    searches go on; otherwise inside the add that reaches the training size.
    """

    def __init__(self, descriptor_dim: int, fingerprint: str, index_type: str = 'flat',
                 thumbnail_size: int = 160, background_training: bool = False, **index_options) -> None:
        if int(descriptor_dim) <= 0:
            raise ConfigError(f'descriptor_dim must be positive, got {descriptor_dim}')
        self.descriptor_dim = int(descriptor_dim)
        self.fingerprint = str(fingerprint)
        self.index_type = index_type
        self.index_options = resolve_index_options(index_type, self.descriptor_dim, index_options)
        self.thumbnail_size = int(thumbnail_size)
        self._lock = threading.RLock()
        self._save_lock = threading.Lock()     # one save at a time (outside the map lock)
        self._store = KeyframeStore(self.descriptor_dim)
        self._index = VectorIndex(self.descriptor_dim, index_type, self.index_options, self._lock,
                                  full_vectors=self._store.vectors)
        self._index.background = bool(background_training)
        self._next_id = 0
        self._warned_norm = False
        self.path: Path | None = None
        # Threads of a search: 0 = automatic (one FAISS thread for up to 4 queries, or numpy's
        # BLAS for long exact scans; the libraries' defaults for batches); 1 = FAISS on one
        # thread; N > 1 = FAISS with N OpenMP threads, numpy's BLAS for flat indexes.
        self.search_threads = 0

    # ---------------------------------------------------------------- state
    @property
    def background_training(self) -> bool:
        return self._index.background

    @background_training.setter
    def background_training(self, value: bool) -> None:
        self._index.background = bool(value)

    @property
    def is_trained(self) -> bool:
        """False while a trainable index collects its training set or trains (see ``train``)."""
        return self._index.is_trained

    @property
    def training(self) -> bool:
        """True while a background training runs."""
        return self._index.training

    @property
    def train_size(self) -> int:
        return self._index.train_size

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    @property
    def next_id(self) -> int:
        return self._next_id

    def ids(self) -> np.ndarray:
        """Keyframe ids in the map, ascending."""
        with self._lock:
            return self._index.ids().copy()

    def __repr__(self) -> str:
        return (f'MapDatabase({len(self)} keyframes, {self.descriptor_dim}-D, {self.index_type}, '
                f'fingerprint {self.fingerprint!r})')

    def memory_bytes(self) -> int:
        """Count the bytes held in RAM by the index structures, the pending vectors and the id table.

        The keyframe metadata, thumbnails and re-ranking descriptors are on disk.
        """
        with self._lock:
            return self._index.memory_bytes()

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
        PNGs for geometric verification (``keyframe_image``). Amortized constant time per keyframe.
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
            rows = [keyframe_row(int(i), kf) for i, kf in zip(ids, keyframes)]
            # store first (one SQLite transaction: all or nothing), then the index; an index failure
            # takes the rows back out, so a failed add leaves neither half behind
            self._store.add(rows, [(int(i), p) for i, p in zip(ids, pngs) if p is not None],
                            (ids, x) if self.index_options['rerank'] else None)
            try:
                self._index.add(x, ids)
            except BaseException:
                self._store.delete(ids.tolist())
                raise
            self._next_id += x.shape[0]
            return ids.tolist()

    def set_search_options(self, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Change the speed/recall trade-off of approximate indexes at run time (saved with the map).

        ``ef_search`` for hnsw, ``nprobe`` for ivfpq.
        """
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
        """Train the index now on the vectors collected so far (MapError if they are too few).

        Waits for a background training first.
        """
        self._index.train()

    def wait_for_training(self, timeout: float | None = None) -> bool:
        """Wait for a background training to finish; True when none runs."""
        return self._index.wait_for_training(timeout)

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
            return self._index.search(q, k, id_below, self.search_threads)

    # ---------------------------------------------------------------- metadata
    def keyframe(self, id: int) -> Keyframe:
        """Return the keyframe with this id (KeyError if the map has none)."""
        with self._lock:
            kf = self._store.keyframe(id)
        if kf is None:
            raise KeyError(f'no keyframe with id {id} in the map ({len(self)} keyframes)')
        return kf

    def keyframes(self, ids: Iterable[int] | None = None) -> list[Keyframe]:
        """Keyframes by id (all of them, by id, when ``ids`` is None)."""
        if ids is None:
            with self._lock:
                return self._store.all_keyframes()
        return [self.keyframe(i) for i in ids]

    def keyframes_between(self, start_ns: int, end_ns: int) -> list[Keyframe]:
        """Keyframes with ``start_ns <= stamp_ns <= end_ns``, by time."""
        with self._lock:
            return self._store.keyframes_between(start_ns, end_ns)

    def nearest_in_time(self, stamp_ns: int, session: str | None = None) -> Keyframe | None:
        """Return the keyframe closest in time to ``stamp_ns`` (optionally within one session)."""
        with self._lock:
            return self._store.nearest_in_time(stamp_ns, session)

    def first_id_at_or_after(self, stamp_ns: int, session: str | None = None) -> int | None:
        """Smallest keyframe id whose stamp is >= ``stamp_ns`` (None if there is none)."""
        with self._lock:
            return self._store.first_id_at_or_after(stamp_ns, session)

    def keyframe_stamps(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return (ids, stamps_ns, session labels, positions) of the keyframes with ``lo <= id < hi``, by id.

        Positions are ``[n, 3]``, NaN where a keyframe has none. The detector follows map sessions in
        time (or travelled distance) with them, a block at a time.
        """
        with self._lock:
            return self._store.stamps(lo, hi)

    def sessions(self) -> dict[str, int]:
        """Session name -> number of keyframes."""
        with self._lock:
            return self._store.sessions()

    def keyframe_image(self, id: int) -> np.ndarray | None:
        """Return the stored grayscale image of a keyframe for geometric verification, or None if it has none.

        Read from disk on demand.
        """
        with self._lock:
            png = self._store.thumbnail_png(id)
        return None if png is None else decode_thumbnail(png, f'keyframe {id}')

    thumbnail = keyframe_image

    def query_image(self, image: np.ndarray) -> np.ndarray:
        """Prepare a query image (RGB or gray uint8) as keyframe images are stored, to compare with ``keyframe_image``.

        Grayscale, at most ``thumbnail_size``.
        """
        return make_thumbnail(image, self.thumbnail_size)

    def descriptors(self, ids: Sequence[int]) -> np.ndarray:
        """Return the stored descriptors ``[N, D]`` of these keyframes.

        Exact with re-ranking or while untrained; reconstructed, hence approximate, for compressed
        index types without it.
        """
        with self._lock:
            return self._index.vectors(np.asarray(ids, np.int64))

    # ---------------------------------------------------------------- removal and merge
    def remove(self, ids: Iterable[int]) -> int:
        """Remove keyframes by id; returns how many were removed.

        A background training in progress is dropped (it restarts with the next add).
        """
        with self._lock:
            ids = np.unique(np.asarray(list(ids), np.int64))
            mask = np.isin(self._index.ids(), ids)
            count = int(mask.sum())
            if count == 0:
                return 0
            removed = self._index.ids()[mask].copy()
            self._index.remove_mask(mask)
            self._store.delete(removed.tolist())
            log.info('removed %d keyframes', count)
            return count

    def remove_session(self, session: str) -> int:
        """Remove every keyframe of a session; returns how many."""
        with self._lock:
            ids = self._store.ids(session)
        if not ids:
            log.warning('no keyframes of session %r to remove; sessions: %s', session, self.sessions())
            return 0
        return self.remove(ids)

    def merge(self, other: 'MapDatabase', session: str | None = None, chunk: int = 4096) -> dict[int, int]:
        """Append another map of the same model (multi-session); returns its id -> new id.

        ``session`` renames the other map's sessions. Descriptors are taken from the other map
        (exact for flat, fp16, hnsw and re-ranked maps; reconstructions otherwise, re-encoded).
        """
        if other.fingerprint != self.fingerprint or other.descriptor_dim != self.descriptor_dim:
            raise MapError(f'cannot merge a map of model {other.fingerprint} ({other.descriptor_dim}-D) into one of '
                           f'model {self.fingerprint} ({self.descriptor_dim}-D); rebuild it with the same model')
        if other is self:
            raise MapError('cannot merge a map into itself')
        lossy = (other.index_type in ('pca', 'ivfpq') or other.index_options['pca_dim']) \
            and not other.index_options['rerank']
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
            with other._lock:
                thumbs = other._store.thumbnail_pngs(block.tolist())
            with self._lock:   # keyframes and their thumbnails in one step: a save sees both or neither
                new = self.add(vectors, kfs)
                self._store.add_thumbnails([(n, thumbs[o]) for o, n in zip(block.tolist(), new) if o in thumbs])
            mapping.update(zip(block.tolist(), new))
        log.info('merged %d keyframes (%s) into the map, now %d', len(mapping), other.sessions(), len(self))
        return mapping

    def clear(self) -> None:
        """Remove every keyframe (the model, index type and options stay; ids are not reused)."""
        with self._lock:
            self._index.clear()
            self._store.clear()

    def close(self) -> None:
        """Delete the scratch files of the open map (the map object is unusable afterwards).

        A background training still running finishes its FAISS call in its thread and then drops its result.
        """
        with self._lock:
            self._index.cancel_training()
            self._store.close()

    # ---------------------------------------------------------------- save / load
    def manifest(self) -> dict:
        """Return what ``manifest.json`` records about this map (without file checksums)."""
        with self._lock:
            return {
                'format': persist.FORMAT, 'format_version': persist.FORMAT_VERSION, 'boq_vpr_version': __version__,
                'fingerprint': self.fingerprint, 'descriptor_dim': self.descriptor_dim,
                'index_type': self.index_type, 'index_options': dict(self.index_options),
                'count': len(self), 'next_id': self._next_id, 'trained': self.is_trained,
                'thumbnail_size': self.thumbnail_size, 'sessions': self.sessions(),
                'faiss_version': faiss.__version__,
            }

    def save(self, path: str | Path) -> None:
        """Write the map to the directory ``path`` atomically.

        A crash mid-save leaves the previous map (if any) readable. The map lock is held only while
        a snapshot is taken (a copy of the FAISS index and a read transaction on the metadata);
        writing, fsync and checksums run outside it, so adds and searches continue meanwhile.
        """
        path = Path(path)
        persist.check_target(path)
        with self._save_lock, contextlib.ExitStack() as stack:
            with self._lock:
                manifest = self.manifest()
                index, ids, pending = self._index.snapshot()
                reader = stack.enter_context(self._store.snapshot_reader())
            written = persist.write_map(path, persist.Snapshot(manifest, index, ids, pending, reader))
        self.path = path
        log.info('saved map %s: %d keyframes, %s index', path, written['count'], self.index_type)

    @classmethod
    def load(cls, path: str | Path, fingerprint: str | None = None,
             descriptor_dim: int | None = None) -> 'MapDatabase':
        """Read a map directory.

        With ``fingerprint``/``descriptor_dim`` given, a map of another model or size is refused
        (MapError naming both); a truncated or corrupt file is refused naming it.
        """
        path = Path(path)
        manifest = persist.read_manifest(path, fingerprint, descriptor_dim)
        data = path / manifest['data_dir']
        options = dict(manifest['index_options'])
        options.setdefault('rerank', 0)   # maps saved before re-ranking have no stored descriptors
        db = cls(int(manifest['descriptor_dim']), str(manifest['fingerprint']), manifest['index_type'],
                 thumbnail_size=manifest.get('thumbnail_size', 160), **options)
        index, ids, pending = persist.read_data(data)
        db._index.restore(index, ids, pending)
        count = db._store.load_from(data / persist.DB_FILE)
        stored = pending.shape[0] if pending is not None else index.ntotal
        if not (count == ids.size == manifest['count'] == stored):
            raise MapError(f'map {path} is inconsistent: manifest count {manifest["count"]}, {ids.size} ids, '
                           f'{count} keyframe rows, {stored} vectors; rebuild the map')
        if db.index_options['rerank'] and db._store.count('vectors') != count:
            raise MapError(f'map {path} re-ranks with stored descriptors but holds {db._store.count("vectors")} '
                           f'for {count} keyframes; rebuild the map')
        db._next_id = int(manifest['next_id'])
        if ids.size and db._next_id <= int(ids.max()):
            raise MapError(f'map {path} is inconsistent: next_id {db._next_id} is not above its largest id '
                           f'{int(ids.max())}; rebuild the map')
        db.path = path
        log.info('loaded map %s: %d keyframes, %d-D, %s index', path, len(db), db.descriptor_dim, db.index_type)
        return db
