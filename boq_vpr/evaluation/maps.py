"""The map database's figures for ``boq-vpr bench map``.

Build time, index memory, single-query latency and recall@1 against exact search per index type and
size (``bench_variant``), the exact single-query paths (``flat_single_query_paths``), the cost of
adds in slam mode (``slam_adds``) and the frame stall while a map is saved (``save_stall``).

Descriptors are synthetic (``Synthetic``: unit vectors with a low intrinsic dimension plus
isotropic noise, generated chunk by chunk from seeds so that maps larger than RAM in float32 can be
built) or read from a file (``RealDescriptors``).
"""
from __future__ import annotations

import gc
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import faiss
import numpy as np
from threadpoolctl import ThreadpoolController

from ..errors import ConfigError
from ..map import Keyframe, MapDatabase
from ..values import latency_summary
from .benchmark import current_rss_mib, time_calls

log = logging.getLogger(__name__)

CHUNK = 4096


def variant_options(pca_dim: int, n: int, d: int) -> dict[str, tuple[str, dict]]:
    """Benchmark variant name -> (index type, options) for a map of n vectors of d dims."""
    p = min(pca_dim, d // 2)
    # IVF: ~4 sqrt(n) lists, trained on 40 vectors per list, with the full-size training vectors
    # held in memory capped at 2 GiB (fewer lists then)
    train = int(min(n, max(20000, 40 * 2 ** round(math.log2(4 * math.sqrt(n)))), 2**31 // (4 * d)))
    nlist = int(2 ** math.floor(math.log2(max(16, min(4 * math.sqrt(n), train / 39)))))
    return {
        'flat': ('flat', {}),
        'fp16': ('fp16', {}),
        'hnsw': ('hnsw', {}),
        f'pca{p}': ('pca', {'pca_dim': p}),
        f'pca{p}+hnsw': ('hnsw', {'pca_dim': p}),
        f'pca{p}+ivfpq': ('ivfpq', {'pca_dim': p, 'nlist': nlist, 'pq_m': p // 4, 'pq_nbits': 8, 'nprobe': 32,
                                    'train_size': train}),
    }


def estimate_bytes(index_type: str, opts: dict, n: int, d: int) -> int:
    """Estimate the peak memory of building a map (to skip what cannot fit).

    FAISS grows its vector storage by doubling, so flat storages briefly need about twice their
    size.
    """
    dd = opts.get('pca_dim') or d
    per = {'flat': 8 * dd, 'pca': 8 * dd, 'fp16': 4 * dd, 'hnsw': 8 * dd + 2 * 32 * 4 * 1.05,
           'ivfpq': 2 * (opts.get('pq_m', 64) + 8)}[index_type]
    train = opts.get('train_size') or (2 * dd if opts.get('pca_dim') else 0)
    return int(n * per + 4 * train * d + (4 * d * dd if opts.get('pca_dim') else 0))


class Synthetic:
    """Reproducible structured descriptors: row i of chunk c always has the same value."""

    def __init__(self, n: int, d: int, latent: int, noise: float, seed: int) -> None:
        self.n, self.d, self.seed, self.noise = n, d, seed, noise
        rng = np.random.default_rng(seed)
        spectrum = (1.0 / np.sqrt(np.arange(1, latent + 1))).astype(np.float32)
        self.spectrum = spectrum
        self.basis = rng.standard_normal((latent, d), dtype=np.float32) / math.sqrt(d)
        self.latent = rng.standard_normal((n, latent), dtype=np.float32) * spectrum
        self._noise_std = noise * float(np.sqrt((spectrum ** 2).sum() / d))

    def _rows(self, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = z @ self.basis
        x += self._noise_std * rng.standard_normal(x.shape, dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        for c, start in enumerate(range(0, self.n, CHUNK)):
            rng = np.random.default_rng([self.seed, 1, c])
            yield start, self._rows(self.latent[start:start + CHUNK], rng)

    def queries(self, count: int) -> np.ndarray:
        """Revisits: the latent code of a random map row, moved a little, with fresh noise."""
        rng = np.random.default_rng([self.seed, 2])
        rows = rng.choice(self.n, size=count, replace=False)
        z = self.latent[rows] + 0.2 * self.spectrum * rng.standard_normal((count, self.latent.shape[1]),
                                                                           dtype=np.float32)
        return self._rows(z, rng)


class RealDescriptors:
    """Descriptors from a file; queries are held-out rows, the map is the rest (memory-mapped)."""

    def __init__(self, path: Path, n: int, queries: int, seed: int) -> None:
        data = np.load(path, mmap_mode='r', allow_pickle=False)
        if data.ndim != 2:
            raise ConfigError(f'{path}: expected an [N, D] array, got shape {data.shape}')
        if data.shape[0] < queries + 2:
            raise ConfigError(f'{path} has {data.shape[0]} descriptors; need more than --queries {queries}')
        rng = np.random.default_rng(seed)
        order = rng.permutation(data.shape[0])
        self.query_rows = np.sort(order[:queries])
        self.map_rows = np.sort(order[queries:queries + n])
        self.data, self.n, self.d = data, len(self.map_rows), data.shape[1]

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.n, CHUNK):
            x = np.asarray(self.data[self.map_rows[start:start + CHUNK]], np.float32)
            yield start, x / np.linalg.norm(x, axis=1, keepdims=True)

    def queries(self, count: int) -> np.ndarray:
        x = np.asarray(self.data[self.query_rows[:count]], np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_top1(source, queries: np.ndarray) -> np.ndarray:
    """Exact nearest map row of each query over the full-dimensional descriptors."""
    best = np.full(len(queries), -np.inf, np.float32)
    arg = np.zeros(len(queries), np.int64)
    for start, x in source.chunks():
        s = queries @ x.T
        j = s.argmax(1)
        v = s[np.arange(len(queries)), j]
        better = v > best
        best[better], arg[better] = v[better], start + j[better]
    return arg


def time_single_queries(search: Callable[[np.ndarray], object], queries: np.ndarray,
                        budget_s: float) -> list[float]:
    """Latency of one query at a time (two untimed warm-up calls), stopping after ``budget_s``."""
    search(queries[0])
    search(queries[1 % len(queries)])
    out = []
    t_end = time.perf_counter() + budget_s
    for q in queries:
        t0 = time.perf_counter()
        search(q)
        out.append(time.perf_counter() - t0)
        if time.perf_counter() > t_end and len(out) >= 5:
            break
    return out


def bench_variant(source, queries: np.ndarray, truth: np.ndarray, index_type: str, opts: dict, k: int,
                  budget_s: float, save_load: bool = True, sweeps: dict | None = None) -> dict:
    sweeps = sweeps or {}
    gc.collect()
    rss0 = current_rss_mib()
    db = MapDatabase(source.d, 'bench', index_type, **opts)
    t0 = time.perf_counter()
    gen = 0.0
    it = source.chunks()
    while True:
        g0 = time.perf_counter()
        try:
            start, x = next(it)
        except StopIteration:
            break
        gen += time.perf_counter() - g0
        db.add(x, [Keyframe(-1, start + i) for i in range(len(x))])
    if not db.is_trained:
        db.train()
    build = time.perf_counter() - t0 - gen
    index_bytes = db.memory_bytes() - db.ids().nbytes
    rss1 = current_rss_mib()
    lat = time_single_queries(lambda q: db.search(q, k), queries, budget_s)
    _, ids = db.search(queries, 1)
    recall = float(np.mean(ids[:, 0] == truth))
    sweep = []
    key = 'ef_search' if index_type == 'hnsw' else 'nprobe' if index_type == 'ivfpq' else None
    for value in (sweeps.get(key) or []) if key else []:
        db.set_search_options(**{key: value})
        lat_v = time_single_queries(lambda q: db.search(q, k), queries, budget_s)
        _, ids_v = db.search(queries, 1)
        p = latency_summary(np.asarray(lat_v) * 1e3, suffix='_ms')
        sweep.append({key: value, 'p50_ms': round(p['p50_ms'], 3), 'p99_ms': round(p['p99_ms'], 3),
                      'recall@1_vs_exact': round(float(np.mean(ids_v[:, 0] == truth)), 4)})
    if key:
        db.set_search_options(**{key: opts.get(key) or MapDatabase(1, '', index_type).index_options[key]})
    result = {'build_s': round(build, 3), 'index_mib': round(index_bytes / 2**20, 1),
              'rss_delta_mib': round(rss1 - rss0, 1), 'recall@1_vs_exact': round(recall, 4),
              **{key: round(v, 3) for key, v in latency_summary(np.asarray(lat) * 1e3, suffix='_ms').items()
                 if key != 'n'},
              'timed_queries': len(lat)}
    if sweep:
        result['sweep'] = sweep
    if save_load:
        with tempfile.TemporaryDirectory(prefix='bench-map-') as tmp:
            t1 = time.perf_counter()
            db.save(tmp)
            t2 = time.perf_counter()
            disk = sum(p.stat().st_size for p in Path(tmp).rglob('*') if p.is_file())
            db = None   # dropped, so that its memory is freed (gc below)
            gc.collect()
            t3 = time.perf_counter()
            db = MapDatabase.load(tmp, fingerprint='bench', descriptor_dim=source.d)
            t4 = time.perf_counter()
        result.update({'save_s': round(t2 - t1, 3), 'load_s': round(t4 - t3, 3), 'disk_mib': round(disk / 2**20, 1)})
    db = None   # dropped, so that its memory is freed (gc below)
    gc.collect()
    return result


def flat_single_query_paths(d: int, n: int, iterations: int = 30) -> dict:
    """Why one query on IndexFlatIP is slower than numpy: time each exact path on the same data."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:1] + 0.01
    q /= np.linalg.norm(q)
    index = faiss.IndexFlatIP(d)
    index.add(x)
    before = faiss.omp_get_max_threads()
    threads = os.cpu_count() or 1
    faiss.omp_set_num_threads(threads)
    threshold = faiss.cvar.distance_compute_blas_threshold

    def timed(fn) -> float:
        return round(float(np.median(time_calls(fn, iterations, warmup=1))) * 1e3, 2)

    out = {'n': n, 'd': d, 'faiss_threads': threads, 'blas_threshold': threshold}
    out['numpy_matvec_ms'] = timed(lambda: x @ q[0])
    with ThreadpoolController().limit(limits=1, user_api='blas'):
        out['numpy_matvec_1thread_ms'] = timed(lambda: x @ q[0])
    out['faiss_search_ms'] = timed(lambda: index.search(q, 10))
    faiss.omp_set_num_threads(1)
    out['faiss_search_1thread_ms'] = timed(lambda: index.search(q, 10))
    faiss.omp_set_num_threads(threads)
    faiss.cvar.distance_compute_blas_threshold = 0
    try:
        out['faiss_search_blas_path_ms'] = timed(lambda: index.search(q, 10))
    finally:
        faiss.cvar.distance_compute_blas_threshold = threshold
    batch = np.repeat(q, 2 * threads, axis=0)
    out[f'faiss_search_{2 * threads}_queries_per_query_ms'] = round(timed(lambda: index.search(batch, 10))
                                                                    / len(batch), 2)
    db = MapDatabase(d, 'bench')
    db.add(x, [Keyframe(-1, i) for i in range(n)])
    out['map_db_search_ms'] = timed(lambda: db.search(q[0], 10))
    faiss.omp_set_num_threads(before)
    return out


def slam_adds(d: int, n: int, variant: str, opts: dict, background: bool, latent: int, noise: float,
              seed: int, windows: tuple[int, ...] = (100, 1000, 10_000), window: int = 100,
              before: str = 'search') -> dict:
    """Time keyframes added one at a time to a map in slam mode.

    Each keyframe is added after a search (``before='search'``, the detector's slam loop), after
    nothing (``'nothing'``: the add's own cost) or after a scan of as many bytes as the full map
    holds (``'sweep'``: cold caches without a search, the control that tells cache effects from work
    that grows with the map): the cost per add in windows ending at ``windows`` keyframes, the
    longest add (stall) and what the trainable indexes did meanwhile (when training started and
    ended, adds made during it).
    """
    index_type = 'flat' if variant == 'flat' else variant
    source = Synthetic(n, d, latent, noise, seed)
    x = np.concatenate([c for _, c in source.chunks()])
    db = MapDatabase(d, 'bench', index_type, background_training=background, **opts)
    sweep = np.ones((n, d), np.float32) if before == 'sweep' else None
    adds = np.zeros(n)
    training_from = training_to = None
    during = 0
    for i in range(n):
        if before == 'search':
            db.search(x[i], 5)
        elif sweep is not None:
            float(sweep.sum())
        t0 = time.perf_counter()
        db.add(x[i], [Keyframe(-1, i)])
        adds[i] = time.perf_counter() - t0
        if db.training:
            during += 1
            if training_from is None:
                training_from = i
        elif training_from is not None and training_to is None:
            training_to = i
    db.wait_for_training()
    if training_from is not None and training_to is None:
        training_to = n
    trained_at = int(np.argmax(adds)) if index_type != 'flat' else None
    out = {'variant': variant, 'index_type': index_type, 'options': opts, 'd': d, 'n': n,
           'background_training': background, 'search_before_add': before == 'search', 'before_add': before,
           'trained': db.is_trained}
    for w in windows:
        if w <= n:
            seg = adds[w - window:w] * 1e3
            out[f'add_ms_mean_{w}'] = round(float(seg.mean()), 4)
            out[f'add_ms_median_{w}'] = round(float(np.median(seg)), 4)
            out[f'add_ms_p99_{w}'] = round(float(np.percentile(seg, 99)), 4)
    first, last = [w for w in windows if w <= n][0], [w for w in windows if w <= n][-1]
    out['ratio_last_first_window'] = round(out[f'add_ms_mean_{last}'] / out[f'add_ms_mean_{first}'], 3)
    out['ratio_last_first_window_median'] = round(out[f'add_ms_median_{last}'] / out[f'add_ms_median_{first}'], 3)
    out['longest_add_ms'] = round(float(adds.max()) * 1e3, 3)
    out['longest_add_at'] = int(np.argmax(adds))
    if index_type != 'flat':
        out['training_started_at_keyframe'] = training_from if background else db.train_size - 1
        out['training_ended_at_keyframe'] = training_to
        out['adds_during_training'] = during
        out['longest_add_ms_excluding_trigger'] = round(float(np.delete(adds, trained_at).max()) * 1e3, 3)
    db.close()
    return out


def save_stall(n: int, d: int, latent: int, noise: float, seed: int) -> dict:
    """Measure how long a frame loop stops while the map is saved.

    The frame loop (add + search) runs in another thread; the map is saved with the map lock held
    for the whole save (for comparison) and with the snapshot save (what save does).
    """
    import threading
    source = Synthetic(n, d, latent, noise, seed)
    db = MapDatabase(d, 'bench', 'flat')
    for start, x in source.chunks():
        db.add(x, [Keyframe(-1, start + i) for i in range(len(x))])
    probe = source.queries(64)
    out = {'n': n, 'd': d, 'index_type': 'flat'}
    with tempfile.TemporaryDirectory(prefix='bench-map-save-') as tmp:
        db.save(Path(tmp) / 'warm')    # first save of the run: page cache and folders warm
        for mode in ('lock_held_whole_save', 'snapshot_then_write'):
            stop = threading.Event()
            loop: list[tuple[float, float]] = []

            def frames() -> None:
                i = 0
                while not stop.is_set():
                    t0 = time.perf_counter()
                    db.search(probe[i % len(probe)], 5)
                    db.add(probe[i % len(probe)], [Keyframe(-1, 10**12 + i)])
                    loop.append((t0, time.perf_counter()))
                    i += 1
                    time.sleep(0.002)    # a camera's pace, leaving the CPU to the save
            worker = threading.Thread(target=frames)
            worker.start()
            time.sleep(0.3)
            t0 = time.perf_counter()
            if mode == 'lock_held_whole_save':
                with db._lock:           # the map lock held around write, fsync and checksums
                    db.save(Path(tmp) / mode)
            else:
                db.save(Path(tmp) / mode)
            t1 = time.perf_counter()
            time.sleep(0.3)
            stop.set()
            worker.join()
            inside = [b - a for a, b in loop if b >= t0 and a <= t1]
            gaps = [loop[j + 1][0] - loop[j][1] - 0.002 for j in range(len(loop) - 1)
                    if loop[j + 1][0] >= t0 and loop[j][1] <= t1]
            stall = max(inside + gaps + [0.0])
            out[mode] = {'save_s': round(t1 - t0, 3), 'longest_frame_stall_ms': round(stall * 1e3, 1),
                         'frames_during_save': len(inside)}
    out['stall_ratio_before_after'] = round(out['lock_held_whole_save']['longest_frame_stall_ms'] /
                                            max(out['snapshot_then_write']['longest_frame_stall_ms'], 1e-3), 1)
    db.close()
    return out
