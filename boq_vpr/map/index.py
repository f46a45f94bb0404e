"""The vector index of a map: FAISS index types, their options, and the search paths.

``VectorIndex`` holds the keyframe descriptors of one map: a FAISS index plus the keyframe id of
each stored vector, and, while a trainable index (``pca``, ``ivfpq``) collects its training set,
the pending vectors, searched exactly. Vectors and ids live in growable buffers (capacity doubles),
so an add costs amortized constant time whatever the map size. Training, in the calling thread or
in a background thread, is in ``training`` (``IndexTraining``, the base class of ``VectorIndex``).

With ``rerank`` > 0 the candidates of the index are re-scored with the stored full descriptors
(``full_vectors``): scores are then exact cosines on every index type and stay on the same scale
before and after training. The class does no locking of its own except the swap: the map facade
serializes calls with the lock it passes in.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Callable

import faiss
import numpy as np

from ..errors import ConfigError
from .training import IndexTraining, min_train_size

log = logging.getLogger(__name__)

# Queries x map vectors scored at once by the exact path (bounds the temporary score matrix).
_SCORE_BLOCK = 1 << 25
# From this many multiply-adds on, a few queries on a flat index go through numpy's BLAS (its
# threads pay off on long scans); below, through FAISS on one thread (bench map: flat_single_query).
_BLAS_MIN_WORK = 1 << 26


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

# Options each index type accepts, with defaults. ``pca_dim`` (0 = off), ``train_size`` (0 = a
# sensible default) and ``rerank`` (candidates re-scored with the full descriptors, 0 = off;
# default RERANK_DEFAULT for trainable indexes, 0 otherwise) work with every type.
_COMMON_OPTIONS = {'pca_dim': 0, 'train_size': 0, 'rerank': 0}
RERANK_DEFAULT = 64
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
    if 'rerank' not in options and need:
        opts['rerank'] = RERANK_DEFAULT   # scores on one scale before and after training
    return opts


def index_bytes(index: faiss.Index) -> int:
    """Bytes of the arrays that make up a FAISS index (vectors, codes, graph, lists, transforms)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        total = index_bytes(index.index)
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
        return graph + index_bytes(index.storage)
    if isinstance(index, faiss.IndexIVF):
        invlists = faiss.extract_index_ivf(index).invlists
        codes = sum(invlists.list_size(i) for i in range(invlists.nlist)) * (invlists.code_size + 8)
        extra = 4 * index.pq.centroids.size() if isinstance(index, faiss.IndexIVFPQ) else 0
        return codes + extra + index_bytes(index.quantizer)
    if isinstance(index, faiss.IndexFlatCodes):   # flat, scalar quantizer, ...
        return index.codes.size()
    return index.ntotal * index.d * 4              # an estimate for other types


@contextlib.contextmanager
def omp_threads(threads: int):
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


class GrowableArray:
    """An append-only array with spare capacity: ``append`` costs amortized constant time per row.

    Rows below ``len`` never change once written (growth allocates a new buffer and leaves the
    old one to whoever holds a view of it), so ``view()`` can be handed to another thread or kept
    as a snapshot. ``reallocations`` counts the buffer copies (logarithmic in the row count).
    """

    def __init__(self, row_shape: tuple[int, ...] = (), dtype=np.float32, capacity: int = 256) -> None:
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self._buf = np.empty((max(1, capacity), *self.row_shape), self.dtype)
        self._n = 0
        self.reallocations = 0

    def __len__(self) -> int:
        return self._n

    def view(self) -> np.ndarray:
        return self._buf[:self._n]

    def append(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, self.dtype).reshape(-1, *self.row_shape)
        need = self._n + rows.shape[0]
        if need > self._buf.shape[0]:
            grown = np.empty((max(need, 2 * self._buf.shape[0]), *self.row_shape), self.dtype)
            grown[:self._n] = self._buf[:self._n]
            self._buf = grown
            self.reallocations += 1
        self._buf[self._n:need] = rows
        self._n = need

    def truncate(self, n: int) -> None:
        """Forget rows from ``n`` on (undo of a failed append; the buffer keeps its capacity)."""
        self._n = min(self._n, int(n))

    def replace(self, array: np.ndarray) -> None:
        """Hold exactly ``array`` (a new buffer: views handed out before keep their rows)."""
        array = np.asarray(array, self.dtype).reshape(-1, *self.row_shape)
        self._buf = np.array(array, copy=True) if array.shape[0] else np.empty((256, *self.row_shape), self.dtype)
        self._n = array.shape[0]


def _exact_scores(xb: np.ndarray, q: np.ndarray, k: int, limit: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of ``q @ xb[:limit].T`` (scores, ``ids`` of the rows), padded with -inf / -1."""
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


class VectorIndex(IndexTraining):
    """Descriptors of one map (see the module docstring); ids ascend with insertion."""

    def __init__(self, descriptor_dim: int, index_type: str, options: dict, lock: threading.RLock,
                 full_vectors: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        super().__init__()
        self.descriptor_dim = int(descriptor_dim)
        self.index_type = index_type
        self.options = options          # resolved (resolve_index_options); shared with the facade
        self._lock = lock
        self._full_vectors = full_vectors
        self.background = False         # train in a thread (slam mode) instead of inside add
        self._index = self.new_faiss_index()
        # Position in the index -> keyframe id (ascending), for index types labelled by position;
        # IVF indexes are labelled by keyframe id directly.
        self._ids = GrowableArray((), np.int64)
        self._pending = GrowableArray((self.descriptor_dim,), np.float32)

    # ---------------------------------------------------------------- construction
    def new_faiss_index(self) -> faiss.Index:
        o = self.options
        d = o['pca_dim'] or self.descriptor_dim
        inner = INDEX_TYPES[self.index_type](d, o)
        if not o['pca_dim']:
            return inner
        pca = faiss.PCAMatrix(self.descriptor_dim, d, 0.0, False)
        chain = faiss.IndexPreTransform(inner)
        chain.prepend_transform(faiss.NormalizationTransform(d, 2.0))
        chain.prepend_transform(pca)  # the Python wrapper keeps the parts alive (no own_fields)
        return chain

    def restore(self, index: faiss.Index, ids: np.ndarray, pending: np.ndarray | None) -> None:
        """Take the state read from a saved map."""
        self._index = index
        self._ids.replace(ids)
        self._pending.replace(pending if pending is not None else np.zeros((0, self.descriptor_dim), np.float32))

    @property
    def labels_are_ids(self) -> bool:
        return self.index_type == 'ivfpq'

    def _core(self, index: faiss.Index | None = None) -> faiss.Index:
        """Return the index after the optional PCA transform."""
        index = self._index if index is None else index
        if isinstance(index, faiss.IndexPreTransform):
            return faiss.downcast_index(index.index)
        return index

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    @property
    def rerank(self) -> int:
        return int(self.options['rerank']) if self._full_vectors is not None else 0

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> np.ndarray:
        return self._ids.view()

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def memory_bytes(self) -> int:
        return int(index_bytes(self._index) + self._ids.view().nbytes + self._pending.view().nbytes)

    # ---------------------------------------------------------------- add
    def add(self, x: np.ndarray, ids: np.ndarray) -> None:
        """Append vectors ``x`` with ascending ``ids`` (caller holds the lock).

        Synchronous training errors undo the add and propagate; background ones are logged and
        retried later.
        """
        if not self._index.is_trained:
            n_ids, n_pending = len(self._ids), len(self._pending)
            self._pending.append(x)
            self._ids.append(ids)
            if self._trainer is None and len(self._pending) >= max(self.train_size, self._retry_at):
                if self.background:
                    self._start_training()
                else:
                    try:
                        self._train_now()
                    except BaseException:
                        self._pending.truncate(n_pending)   # the add fails whole
                        self._ids.truncate(n_ids)
                        raise
            return
        if self.labels_are_ids:
            self._index.add_with_ids(x, ids)
        else:
            self._index.add(x)
        self._ids.append(ids)

    def _install(self, index: faiss.Index) -> None:
        """Swap in a trained index holding every vector so far; older trainings are then dropped."""
        self._generation += 1   # a training started before this one holds an older snapshot: dropped
        self._index = index
        self._pending = GrowableArray((self.descriptor_dim,), np.float32)
        self._retry_at = 0

    # ---------------------------------------------------------------- removal
    def remove_mask(self, mask: np.ndarray) -> None:
        """Remove the vectors at ``mask`` (a boolean over ``ids()``; caller holds the lock)."""
        self._generation += 1   # a running training holds the removed vectors: its result is dropped
        self._trainer = None
        ids = self._ids.view()
        if len(self._pending):
            self._pending.replace(self._pending.view()[~mask])
        elif self.labels_are_ids:
            self._index.remove_ids(faiss.IDSelectorBatch(ids[mask]))
        else:
            self._remove_positions(np.flatnonzero(mask))
        self._ids.replace(ids[~mask])

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

    def clear(self) -> None:
        self._generation += 1
        self._trainer = None
        self._index = self.new_faiss_index()
        self._ids = GrowableArray((), np.int64)
        self._pending = GrowableArray((self.descriptor_dim,), np.float32)

    # ---------------------------------------------------------------- snapshot (for saving)
    def snapshot(self) -> tuple[faiss.Index | np.ndarray, np.ndarray, np.ndarray | None]:
        """Return (a copy of the FAISS index, ids, pending vectors or None) as they are now.

        The index is cloned, or serialized (uint8 array) where FAISS cannot clone a part of it (the PCA chain's
        normalization). The ids and pending vectors are views of append-only buffers: later adds
        do not change them.
        """
        pending = self._pending.view()
        try:
            index = faiss.clone_index(self._index)
        except RuntimeError:
            index = faiss.serialize_index(self._index)
        return index, self._ids.view(), (pending if pending.shape[0] else None)

    # ---------------------------------------------------------------- reading vectors back
    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Positions of ``ids`` in ``ids()``; KeyError naming the ids that are not in the map."""
        all_ids = self._ids.view()
        pos = np.searchsorted(all_ids, ids)
        bad = (pos >= all_ids.size) | (all_ids[np.minimum(pos, max(all_ids.size - 1, 0))] != ids) \
            if all_ids.size else np.ones(ids.shape, bool)
        if np.any(bad):
            raise KeyError(f'no keyframe(s) with id {ids[bad][:10].tolist()} in the map')
        return pos

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """Return the stored vectors of ``ids`` (exact when pending or re-ranked, else the index's reconstructions)."""
        pos = self.positions(ids)
        if not ids.size:
            return np.zeros((0, self.descriptor_dim), np.float32)
        if len(self._pending):
            return self._pending.view()[pos].copy()
        if self.rerank:
            return self._full_vectors(ids)
        if self.labels_are_ids:
            core = self._core()
            if isinstance(core, faiss.IndexIVF) and core.direct_map.type != faiss.DirectMap.Hashtable:
                core.set_direct_map_type(faiss.DirectMap.Hashtable)
            return self._index.reconstruct_batch(ids)
        return self._index.reconstruct_batch(pos.astype(np.int64))

    # ---------------------------------------------------------------- search
    def search(self, q: np.ndarray, k: int, id_below: int | None, threads: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the top-``k`` (scores, ids) of normalized queries ``q`` (caller holds the lock).

        See ``MapDatabase.search``. ``threads``: the map's ``search_threads``.
        """
        n = q.shape[0]
        ids = self._ids.view()
        limit = ids.size if id_below is None else int(np.searchsorted(ids, id_below))
        if limit == 0:
            return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
        if len(self._pending):
            return _exact_scores(self._pending.view(), q, k, limit, ids)
        # A few queries run on one thread unless search_threads says otherwise: FAISS splits a
        # search over its queries, so more threads cannot help one query, and waking idle
        # OpenMP threads costs more than they save on a machine shared with a SLAM stack
        # (2-30x slower measured on a busy machine, see bench map).
        few = n <= 4
        omp = threads or (1 if few else 0)
        core = self._core()
        if isinstance(core, faiss.IndexFlat) and not self.rerank:
            work = n * limit * core.d
            if not few or omp > 1 or (threads == 0 and work >= _BLAS_MIN_WORK):
                # numpy over FAISS's own storage (no copy): one BLAS sgemv/sgemm. FAISS scans
                # the vectors one by one for a few queries (BLAS only from
                # distance_compute_blas_threshold queries on, never with an id selector),
                # which is slower on long scans than a threaded BLAS product.
                xq = self._transform(q)
                xb = faiss.rev_swig_ptr(core.get_xb(), core.ntotal * core.d).reshape(core.ntotal, core.d)
                return _exact_scores(xb, xq, k, limit, ids)
        kk = max(k, self.rerank)
        with omp_threads(omp):
            scores, labels = self._faiss_search(q, kk, limit, id_below)
        if self.rerank:
            scores, labels = self._rescore(q, labels, k)
        return scores[:, :k], labels[:, :k]

    def _rescore(self, q: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosines of the candidates from their stored full descriptors, best first."""
        found = np.unique(labels[labels >= 0])
        scores = np.full(labels.shape, -np.inf, np.float32)
        if found.size:
            full = self._full_vectors(found)                        # [m, D]
            exact = q @ full.T                                       # [n, m]
            col = np.searchsorted(found, np.maximum(labels, 0))
            valid = labels >= 0
            scores[valid] = np.take_along_axis(exact, col, axis=1)[valid]
        order = np.argsort(-scores, axis=1, kind='stable')[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(labels, order, axis=1)

    def _transform(self, x: np.ndarray) -> np.ndarray:
        """Descriptors as the core index sees them (after the optional PCA + normalization)."""
        if not isinstance(self._index, faiss.IndexPreTransform):
            return x
        for i in range(self._index.chain.size()):
            x = self._index.chain.at(i).apply(x)
        return x

    def _search_params(self, selector, k: int) -> faiss.SearchParameters:
        core = self._core()
        o = self.options
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
        ids = self._ids.view()
        selector = None
        if limit < ids.size:
            selector = faiss.IDSelectorRange(0, int(id_below) if self.labels_are_ids else limit)
        params = self._search_params(selector, k)
        d, lab = self._index.search(q, k, params=params)
        valid = lab >= 0
        if not self.labels_are_ids:
            lab = np.where(valid, ids[np.clip(lab, 0, max(ids.size - 1, 0))], -1)
        d = np.where(valid, d, -np.inf).astype(np.float32)
        return d, lab.astype(np.int64)
