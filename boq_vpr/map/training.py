"""Training of a map's vector index: in the calling thread, or in a background thread.

A trainable index (``pca``, ``ivfpq``) collects its first vectors as pending, searched exactly, until
it has ``train_size`` of them. Training then runs either in the calling thread or, with
``background=True``, in a thread on the vectors collected so far (a view of the append-only buffer,
no copy) while adds and exact searches continue; the trained index catches up with the vectors added
meanwhile and is swapped in under the map's lock. A removal, clear, close or another training in
the meantime bumps the index's generation, and a training of the older vectors is then dropped; a
failed background training leaves the map exact and is retried once the map has doubled.
"""
from __future__ import annotations

import logging
import threading

import faiss
import numpy as np

from ..errors import MapError

log = logging.getLogger(__name__)

# The background trainer swaps its index in once fewer vectors than this remain to catch up on.
CATCH_UP = 256


def min_train_size(index_type: str, opts: dict) -> int:
    """How many vectors the index needs before it can be trained (0 = needs no training)."""
    need = 0
    if opts['pca_dim']:
        need = max(need, opts['pca_dim'])
    if index_type == 'ivfpq':
        need = max(need, opts['nlist'], 1 << opts['pq_nbits'])
    return need


def default_train_size(index_type: str, opts: dict) -> int:
    """How many vectors an index trains on when ``train_size`` is 0: enough for stable estimates."""
    need = min_train_size(index_type, opts)
    if opts['pca_dim']:  # twice the components for a stable estimate of them
        need = max(need, 2 * opts['pca_dim'])
    if index_type == 'ivfpq':  # FAISS's k-means wants ~39 points per centroid
        need = max(need, 39 * opts['nlist'], 39 * (1 << opts['pq_nbits']))
    return need


class IndexTraining:
    """The training part of ``VectorIndex`` (its base class).

    Works on the state ``VectorIndex`` holds: ``_index``, ``_ids`` and ``_pending`` (append-only
    buffers), ``_lock``, ``options``, ``index_type``, ``labels_are_ids``, ``new_faiss_index()`` and
    ``_install(index)``, which swaps a trained index in and bumps ``_generation``.
    """

    def __init__(self) -> None:
        self._generation = 0            # bumped by remove/clear: a training of older vectors is dropped
        self._trainer: threading.Thread | None = None
        self._retry_at = 0              # pending size at which a failed background training is retried
        self.last_training_error: BaseException | None = None

    @property
    def training(self) -> bool:
        """True while a background training runs."""
        return self._trainer is not None

    @property
    def train_size(self) -> int:
        return self.options['train_size'] or default_train_size(self.index_type, self.options)

    def train(self) -> None:
        """Train now on the vectors collected so far (waits for a background training first)."""
        self.wait_for_training()
        with self._lock:
            if not self._index.is_trained:
                self._train_now()

    def wait_for_training(self, timeout: float | None = None) -> bool:
        """Wait for a background training to end; True when none runs any more. Call without the lock."""
        trainer = self._trainer
        if trainer is not None:
            trainer.join(timeout)
        return self._trainer is None or not self._trainer.is_alive()

    def _check_trainable(self, n: int) -> None:
        need = min_train_size(self.index_type, self.options)
        if n < need:
            raise MapError(f'index type {self.index_type} with options {self.options} needs at least {need} '
                           f'vectors to train, the map has {n}; add more keyframes, lower pca_dim/nlist/'
                           f'pq_nbits, or use index type flat or fp16 (no training)')

    def _train_now(self) -> None:
        x, ids = self._pending.view(), self._ids.view()
        self._check_trainable(x.shape[0])
        index = self._trained_index(x, ids)
        self._install(index)

    def cancel_training(self) -> None:
        """Drop the result of a running background training (caller holds the lock)."""
        self._generation += 1
        self._trainer = None

    def _trained_index(self, x: np.ndarray, ids: np.ndarray) -> faiss.Index:
        """Build a new index of this type trained on ``x`` and holding ``x`` (runs without the lock)."""
        index = self.new_faiss_index()
        log.info('training %s index on %d vectors', self.index_type, x.shape[0])
        if isinstance(index, faiss.IndexPreTransform):
            for i in range(index.chain.size()):
                vt = faiss.downcast_VectorTransform(index.chain.at(i))
                if isinstance(vt, faiss.PCAMatrix) and not vt.is_trained:
                    # FAISS's PCA eigendecomposes a matrix of side min(vectors, dimension): cubic
                    # time, minutes at 16384-D. 4x the components, spread over the map, suffice.
                    m = min(x.shape[0], max(4 * vt.d_out, 1024))
                    vt.train(np.ascontiguousarray(x[np.linspace(0, x.shape[0] - 1, m).astype(np.int64)]))
                    vt.PCAMat.clear()  # the full eigenvector matrix is only used during training
        index.train(x)  # whatever is still untrained (the index behind the PCA)
        self._add_to(index, x, ids)
        return index

    def _add_to(self, index: faiss.Index, x: np.ndarray, ids: np.ndarray) -> None:
        if x.shape[0] == 0:
            return
        if self.labels_are_ids:
            index.add_with_ids(np.ascontiguousarray(x), np.ascontiguousarray(ids))
        else:
            index.add(np.ascontiguousarray(x))

    def _start_training(self) -> None:
        generation = self._generation
        x, ids = self._pending.view(), self._ids.view()   # stable views: the buffers only append
        self._check_trainable(x.shape[0])
        thread = threading.Thread(target=self._train_in_background, args=(x, ids, generation),
                                  name='boq_vpr-map-training', daemon=True)
        self._trainer = thread
        thread.start()

    def _train_in_background(self, x: np.ndarray, ids: np.ndarray, generation: int) -> None:
        try:
            index = self._trained_index(x, ids)
            done = x.shape[0]
            while True:   # catch up with the vectors added meanwhile, outside the lock where many
                with self._lock:
                    if self._generation != generation:
                        log.info('map changed during training (removal, clear, close or another training): '
                                 'training result dropped')
                        return
                    pending, pending_ids = self._pending.view(), self._ids.view()
                    if pending.shape[0] - done <= CATCH_UP:
                        self._add_to(index, pending[done:], pending_ids[done:])
                        self._install(index)
                        self._trainer = None
                        log.info('%s index trained in the background: %d vectors', self.index_type, len(self._ids))
                        return
                self._add_to(index, pending[done:], pending_ids[done:pending.shape[0]])
                done = pending.shape[0]
        except BaseException as err:   # the map stays untrained and exact; retried when it has grown
            log.error('background training of the %s index failed (%s: %s); searching exactly and retrying '
                      'once the map has doubled', self.index_type, type(err).__name__, err)
            with self._lock:
                self.last_training_error = err
                if self._generation == generation:
                    self._retry_at = 2 * x.shape[0]
        finally:
            with self._lock:
                if self._trainer is threading.current_thread():
                    self._trainer = None
