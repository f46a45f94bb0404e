"""``boq-vpr bench map``: the map database per index type and size: build time, index memory,
single-query latency (p50/p99) through ``MapDatabase.search``, and recall@1 against exact search
over the full-dimensional descriptors. ``--slam``: the cost of one add at 100, 1k and 10k keyframes
in slam mode (flat, pca, ivfpq; training in the background and, for comparison, inside the add),
the longest stall across the training point, and how long a frame loop stops while a 100k x 1024
map is saved, with the lock held for the whole save (as before) and with the snapshot save. Also times the exact single-query paths (numpy matrix-vector
product vs ``IndexFlatIP.search``) to show which is faster and why.

Descriptors are synthetic unless ``--descriptors`` gives real ones (a ``.npy`` from ``boq-vpr
encode``): unit vectors with a low intrinsic dimension (``--latent``, decaying spectrum) plus
isotropic noise, generated chunk by chunk from seeds so that maps larger than RAM in float32 can
be built. Recall of PCA-based indexes depends on how low-dimensional the descriptors are; check it
on your own descriptors with ``--descriptors``.
"""
from __future__ import annotations

import argparse
import gc
import logging
import math
import tempfile
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import faiss
import numpy as np
from threadpoolctl import ThreadpoolController

from ..evaluation.benchmark import current_rss_mib, machine_info, peak_rss_mib, percentiles_ms
from ..errors import ConfigError
from ..map import Keyframe, MapDatabase
from .common import write_json

log = logging.getLogger(__name__)

CHUNK = 4096


def _variant_options(pca_dim: int, n: int, d: int) -> dict[str, tuple[str, dict]]:
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


def _estimate_bytes(index_type: str, opts: dict, n: int, d: int) -> int:
    """Rough peak memory of building a map (to skip what cannot fit): FAISS grows its vector
    storage by doubling, so flat storages briefly need about twice their size."""
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
        p = percentiles_ms(lat_v)
        sweep.append({key: value, 'p50_ms': round(p['p50_ms'], 3), 'p99_ms': round(p['p99_ms'], 3),
                      'recall@1_vs_exact': round(float(np.mean(ids_v[:, 0] == truth)), 4)})
    if key:
        db.set_search_options(**{key: opts.get(key) or MapDatabase(1, '', index_type).index_options[key]})
    result = {'build_s': round(build, 3), 'index_mib': round(index_bytes / 2**20, 1),
              'rss_delta_mib': round(rss1 - rss0, 1), 'recall@1_vs_exact': round(recall, 4),
              **{key: round(v, 3) for key, v in percentiles_ms(lat).items() if key != 'n'},
              'timed_queries': len(lat)}
    if sweep:
        result['sweep'] = sweep
    if save_load:
        with tempfile.TemporaryDirectory(prefix='bench-map-') as tmp:
            t1 = time.perf_counter()
            db.save(tmp)
            t2 = time.perf_counter()
            disk = sum(p.stat().st_size for p in Path(tmp).rglob('*') if p.is_file())
            del db
            gc.collect()
            t3 = time.perf_counter()
            db = MapDatabase.load(tmp, fingerprint='bench', descriptor_dim=source.d)
            t4 = time.perf_counter()
        result.update({'save_s': round(t2 - t1, 3), 'load_s': round(t4 - t3, 3), 'disk_mib': round(disk / 2**20, 1)})
    del db
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
        fn()
        ts = []
        for _ in range(iterations):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return round(float(np.median(ts)) * 1e3, 2)

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
    out[f'faiss_search_{2 * threads}_queries_per_query_ms'] = round(timed(lambda: index.search(batch, 10)) / len(batch), 2)
    db = MapDatabase(d, 'bench')
    db.add(x, [Keyframe(-1, i) for i in range(n)])
    out['map_db_search_ms'] = timed(lambda: db.search(q[0], 10))
    faiss.omp_set_num_threads(before)
    return out


def slam_adds(d: int, n: int, variant: str, opts: dict, background: bool, latent: int, noise: float,
              seed: int, windows: tuple[int, ...] = (100, 1000, 10_000), window: int = 100,
              before: str = 'search') -> dict:
    """Keyframes added one at a time, each after a search (``before='search'``, the detector's slam
    loop), after nothing (``'nothing'``: the add's own cost) or after a scan of as many bytes as the
    full map holds (``'sweep'``: cold caches without a search, the control that tells cache effects
    from work that grows with the map): the cost per add in windows ending at ``windows`` keyframes,
    the longest add (stall) and what the trainable indexes did meanwhile (when training started and
    ended, adds made during it)."""
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
    """How long a frame loop (add + search, another thread) stops while the map is saved: with the
    map lock held for the whole save (for comparison) and with the snapshot save (what save does)."""
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


def run_slam(args: argparse.Namespace) -> int:
    """``--slam``: per-add cost and stalls in slam mode, and the save stall, in one run."""
    d, n = args.slam_dim, args.slam_keyframes
    pca_dim = min(args.pca_dim, d // 2)
    train = args.slam_train_size
    ivfpq = {'pca_dim': pca_dim, 'nlist': 64, 'pq_m': pca_dim // 8, 'pq_nbits': 8, 'nprobe': 16, 'train_size': train}
    variants = [('flat', {}, True, 'nothing'), ('flat', {}, True), ('flat', {}, True, 'sweep'),
                ('pca', {'pca_dim': pca_dim, 'train_size': train}, True),
                ('ivfpq', ivfpq, True, 'nothing'), ('ivfpq', ivfpq, True), ('ivfpq', ivfpq, False)]
    report: dict = {'machine': machine_info(), 'faiss': faiss.__version__, 'faiss_threads': faiss.omp_get_max_threads(),
                    'load_average_at_start': list(os.getloadavg()),
                    'command': f'boq-vpr bench map --slam --slam-dim {d} --slam-keyframes {n} '
                               f'--slam-train-size {train} --save-stall-size {args.save_stall_size}',
                    'slam_adds': [], 'save_stall': None}
    for variant, opts, background, *before in variants:
        row = slam_adds(d, n, variant, opts, background, args.latent, args.noise, args.seed,
                        before=before[0] if before else 'search')
        report['slam_adds'].append(row)
        print(f'slam adds {variant:<6} {"background" if background else "in the add":<10} '
              f'{ {"search": "search+add", "nothing": "add only", "sweep": "sweep+add"}[row["before_add"]]:<10} d={d} ' +
              '  '.join(f'{w}: {row[f"add_ms_mean_{w}"]:.3f} ms' for w in (100, 1000, 10_000)
                        if f'add_ms_mean_{w}' in row) +
              f'  ratio {row["ratio_last_first_window"]:.2f} (medians {row["ratio_last_first_window_median"]:.2f})  longest add {row["longest_add_ms"]:.1f} ms' +
              (f' (training keyframes {row["training_started_at_keyframe"]}-{row["training_ended_at_keyframe"]}, '
               f'{row["adds_during_training"]} adds during it)' if 'adds_during_training' in row else ''), flush=True)
        write_json(args.out, report)
    if args.save_stall_size:
        st = save_stall(args.save_stall_size, 1024, args.latent, args.noise, args.seed)
        report['save_stall'] = st
        for mode in ('lock_held_whole_save', 'snapshot_then_write'):
            print(f'save {st["n"]} x {st["d"]} {mode:<22} save {st[mode]["save_s"]:.2f} s  longest frame stall '
                  f'{st[mode]["longest_frame_stall_ms"]:.1f} ms  frames during save {st[mode]["frames_during_save"]}')
        print(f'save stall ratio before/after: {st["stall_ratio_before_after"]}')
    report['peak_rss_mib'] = round(peak_rss_mib(), 1)
    report['load_average_at_end'] = list(os.getloadavg())
    write_json(args.out, report)
    print(f'figures saved to {args.out}')
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--sizes', type=int, nargs='+', default=[10_000, 100_000, 1_000_000],
                        help='map sizes (keyframes)')
    parser.add_argument('--dims', type=int, nargs='+', default=[16384, 1024], help='descriptor sizes')
    parser.add_argument('--variants', nargs='+', default=None,
                        help='subset of: flat fp16 hnsw pcaP pcaP+hnsw pcaP+ivfpq (default: all)')
    parser.add_argument('--pca-dim', type=int, default=256, help='PCA output size of the pca variants (default 256)')
    parser.add_argument('--latent', type=int, default=128, help='intrinsic dimension of synthetic descriptors')
    parser.add_argument('--noise', type=float, default=0.5,
                        help='isotropic noise of synthetic descriptors relative to the signal (default 0.5)')
    parser.add_argument('--descriptors', type=Path, default=None,
                        help='real descriptors (.npy [N, D]) instead of synthetic ones')
    parser.add_argument('--queries', type=int, default=200, help='queries for latency and recall (default 200)')
    parser.add_argument('--k', type=int, default=10, help='neighbours per query (default 10)')
    parser.add_argument('--query-budget-s', type=float, default=20.0,
                        help='stop timing single queries of one variant after this long (default 20)')
    parser.add_argument('--max-memory-gib', type=float, default=8.0,
                        help='skip variants whose map would need more memory than this (default 8)')
    parser.add_argument('--threads', type=int, default=0, help='FAISS OpenMP threads (default: all cores)')
    parser.add_argument('--skip-path-check', action='store_true', help='skip the exact single-query path timing')
    parser.add_argument('--path-check-only', action='store_true', help='only time the exact single-query paths')
    parser.add_argument('--ef-search', type=int, nargs='*', default=[],
                        help='also time these ef_search values on each hnsw map (a speed/recall sweep)')
    parser.add_argument('--nprobe', type=int, nargs='*', default=[],
                        help='also time these nprobe values on each ivfpq map')
    parser.add_argument('--no-save-load', action='store_true', help='skip timing save and load of each map')
    parser.add_argument('--slam', action='store_true',
                        help='slam-mode adds instead: cost per add at 100, 1k, 10k keyframes for flat, pca and '
                             'ivfpq, the longest stall across the training point, and the save stall before/after')
    parser.add_argument('--slam-dim', type=int, default=1024, help='descriptor size of --slam (default 1024)')
    parser.add_argument('--slam-keyframes', type=int, default=10_000, help='keyframes added by --slam (default 10000)')
    parser.add_argument('--slam-train-size', type=int, default=5000,
                        help='train_size of the trainable indexes in --slam (default 5000: training mid-run)')
    parser.add_argument('--save-stall-size', type=int, default=100_000,
                        help='map size (x 1024) of the save-stall measurement of --slam (0 = skip; default 100000)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', type=Path, default=Path('bench/map.json'), help='JSON output')


def run(args: argparse.Namespace) -> int:
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    if args.slam:
        return run_slam(args)
    report: dict = {'machine': machine_info(), 'faiss': faiss.__version__, 'faiss_threads': faiss.omp_get_max_threads(),
                    'load_average_at_start': list(os.getloadavg()),
                    'settings': {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                                 if not k.startswith('_') and k not in ('command', 'bench')},
                    'results': []}
    if not args.skip_path_check:
        d = 16384 if 16384 in args.dims else max(args.dims)
        paths = flat_single_query_paths(d, 10_000)
        report['flat_single_query'] = paths
        print(f'exact single query, 10k x {d}: ' + ', '.join(f'{k} {v}' for k, v in paths.items()
                                                            if k.endswith('_ms')))
    dims = [] if args.path_check_only else [None] if args.descriptors else args.dims
    for d in dims:
        for n in args.sizes:
            if args.descriptors:
                source = RealDescriptors(args.descriptors, n, args.queries, args.seed)
                n, d = source.n, source.d
            else:
                source = Synthetic(n, d, args.latent, args.noise, args.seed)
            queries = source.queries(args.queries)
            t0 = time.perf_counter()
            truth = exact_top1(source, queries)
            gt_s = time.perf_counter() - t0
            variants = _variant_options(args.pca_dim, n, d)
            names = args.variants or list(variants)
            for name in names:
                key = name if name in variants else None
                if key is None:
                    raise ConfigError(f'unknown variant {name!r}; valid: {", ".join(variants)}')
                index_type, opts = variants[key]
                row = {'n': n, 'd': d, 'variant': name, 'index_type': index_type, 'options': opts}
                need = _estimate_bytes(index_type, opts, n, d)
                if need > args.max_memory_gib * 2**30:
                    row['skipped'] = f'needs about {need / 2**30:.1f} GiB > --max-memory-gib {args.max_memory_gib}'
                    print(f'n={n:>8} d={d:>5} {name:<16} skipped: {row["skipped"]}')
                    report['results'].append(row)
                    continue
                try:
                    row.update(bench_variant(source, queries, truth, index_type, opts, args.k, args.query_budget_s,
                                             not args.no_save_load,
                                             {'ef_search': args.ef_search, 'nprobe': args.nprobe}))
                except (MemoryError, RuntimeError) as err:
                    row['failed'] = str(err)
                    log.warning('%s n=%d d=%d failed: %s', name, n, d, err)
                row['exact_groundtruth_s'] = round(gt_s, 2)
                report['results'].append(row)
                if 'failed' not in row:
                    print(f'n={n:>8} d={d:>5} {name:<16} build {row["build_s"]:>8.1f} s  index {row["index_mib"]:>8.1f} '
                          f'MiB  p50 {row["p50_ms"]:>8.2f} ms  p99 {row["p99_ms"]:>8.2f} ms  '
                          f'recall@1 {row["recall@1_vs_exact"]:.4f}' +
                          (f'  save {row["save_s"]:.2f} s  load {row["load_s"]:.2f} s' if 'save_s' in row else ''),
                          flush=True)
                    for sw in row.get('sweep', []):
                        print(f'{"":>33}{sw}', flush=True)
                write_json(args.out, {**report, 'peak_rss_mib': round(peak_rss_mib(), 1)})
    report['peak_rss_mib'] = round(peak_rss_mib(), 1)
    report['load_average_at_end'] = list(os.getloadavg())
    write_json(args.out, report)
    print(f'figures saved to {args.out}')
    return 0
