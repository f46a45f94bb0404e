"""``boq-vpr bench map``: the map database per index type and size.

Build time, index memory, single-query latency (p50/p99) through ``MapDatabase.search``, and
recall@1 against exact search over the full-dimensional descriptors. ``--slam``: the cost of one add
at 100, 1k and 10k keyframes in slam mode (flat, pca, ivfpq; training in the background and, for
comparison, inside the add), the longest stall across the training point, and how long a frame loop
stops while a 100k x 1024 map is saved, with the lock held for the whole save (as before) and with
the snapshot save. Also times the exact single-query paths (numpy matrix-vector product vs
``IndexFlatIP.search``) to show which is faster and why.

Descriptors are synthetic unless ``--descriptors`` gives real ones (a ``.npy`` from ``boq-vpr
encode``): unit vectors with a low intrinsic dimension (``--latent``, decaying spectrum) plus
isotropic noise, generated chunk by chunk from seeds so that maps larger than RAM in float32 can
be built. Recall of PCA-based indexes depends on how low-dimensional the descriptors are; check it
on your own descriptors with ``--descriptors``.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from ..errors import ConfigError
from ..evaluation.benchmark import machine_info, peak_rss_mib
from .common import write_json

log = logging.getLogger(__name__)

def run_slam(args: argparse.Namespace) -> int:
    """``--slam``: per-add cost and stalls in slam mode, and the save stall, in one run."""
    import faiss

    from ..evaluation.maps import save_stall, slam_adds
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
              f'{ {"search": "search+add", "nothing": "add only", "sweep": "sweep+add"}[row["before_add"]]:<10} '
              f'd={d} ' +
              '  '.join(f'{w}: {row[f"add_ms_mean_{w}"]:.3f} ms' for w in (100, 1000, 10_000)
                        if f'add_ms_mean_{w}' in row) +
              f'  ratio {row["ratio_last_first_window"]:.2f} (medians {row["ratio_last_first_window_median"]:.2f})'
              f'  longest add {row["longest_add_ms"]:.1f} ms' +
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
    import faiss

    from ..evaluation.maps import (RealDescriptors, Synthetic, bench_variant, estimate_bytes, exact_top1,
                                   flat_single_query_paths, variant_options)
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
            variants = variant_options(args.pca_dim, n, d)
            names = args.variants or list(variants)
            for name in names:
                key = name if name in variants else None
                if key is None:
                    raise ConfigError(f'unknown variant {name!r}; valid: {", ".join(variants)}')
                index_type, opts = variants[key]
                row = {'n': n, 'd': d, 'variant': name, 'index_type': index_type, 'options': opts}
                need = estimate_bytes(index_type, opts, n, d)
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
                    print(f'n={n:>8} d={d:>5} {name:<16} build {row["build_s"]:>8.1f} s  '
                          f'index {row["index_mib"]:>8.1f} '
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
