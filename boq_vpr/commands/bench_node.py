"""``boq-vpr bench node``: vpr_node end to end over DDS, at given input rates.

Builds a map from real frames with the library (the same Encoder and MapDatabase the node uses),
starts ``vpr_node`` as a separate process in localization mode on that map, publishes query frames
at each rate for a while, and measures: end-to-end latency from image publish to loop-closure
receipt (header stamp = publish wall time), the node's own per-stage latencies (from
/diagnostics: queue wait, conversion, encoding, detection, publishing, and the overhead beyond the
encoder), frames received/processed/dropped, and the node's resident memory over time. Figures are
printed and saved as JSON.
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ..errors import BoqVprError
from ..evaluation.benchmark import machine_info
from ..inputs.nordland import TRIMMED_DIR
from ..values import latency_summary
from .common import write_json

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..models.config import MODEL_CONFIGS
    parser.add_argument('--rates', type=float, nargs='+', default=[10.0, 30.0],
                        help='input rates in Hz (default: 10 30)')
    parser.add_argument('--duration', type=float, default=60.0, help='seconds of input per rate (default: 60)')
    parser.add_argument('--model', default='resnet18_1024', choices=sorted(MODEL_CONFIGS),
                        help='model configuration (default: resnet18_1024)')
    parser.add_argument('--weights', type=Path, default=None, help='weight file (default: random weights)')
    parser.add_argument('--backend', default='torch', help='encoder backend of the node (default: torch)')
    parser.add_argument('--device', default='cpu', help='encoder device (default: cpu)')
    parser.add_argument('--precision', default='fp32', help='encoder precision (default: fp32)')
    parser.add_argument('--threads', type=int, default=0, help='encoder CPU threads in the node (0: default)')
    parser.add_argument('--map-images', type=Path, default=TRIMMED_DIR / 'summer',
                        help='folder of map frames (default: Nordland summer from ../shared/data)')
    parser.add_argument('--query-images', type=Path, default=TRIMMED_DIR / 'winter',
                        help='folder of query frames (default: Nordland winter)')
    parser.add_argument('--map-size', type=int, default=1000, help='keyframes in the map (default: 1000)')
    parser.add_argument('--transport', choices=('raw', 'compressed'), default='raw',
                        help='publish sensor_msgs/Image (raw, default) or CompressedImage (jpeg)')
    parser.add_argument('--domain-id', type=int, default=None, help='ROS domain (default: from the process id)')
    parser.add_argument('--out', type=Path, default=Path('bench/node.json'), help='JSON output')


def _build_map(args: argparse.Namespace, folder: Path) -> tuple[Path, int]:
    from ..encoder import Encoder
    from ..inputs.images import list_images, load_image
    from ..map import Keyframe, MapDatabase
    files = list_images(args.map_images)[:args.map_size]
    if not files:
        raise BoqVprError(f'no map images in {args.map_images}')
    encoder = Encoder(args.model, weights=args.weights, backend='torch', device=args.device,
                      precision='fp32', batch_size=16)
    db = MapDatabase(encoder.descriptor_dim, encoder.fingerprint)
    t0 = time.perf_counter()
    for start in range(0, len(files), 64):
        chunk = files[start:start + 64]
        desc = encoder.encode([load_image(f) for f in chunk])
        db.add(desc, [Keyframe(-1, (start + i + 1) * 1_000_000_000, (float(start + i), 0.0, 0.0), None, 'map',
                               f.name) for i, f in enumerate(chunk)])
    path = folder / 'map'
    db.save(path)
    print(f'map: {len(db)} keyframes of {args.model} from {args.map_images} in {time.perf_counter() - t0:.1f} s')
    return path, len(db)


def _run_rate(args: argparse.Namespace, rate: float, map_path: Path, queries: list[np.ndarray], domain: int,
              folder: Path) -> dict:
    import psutil

    from ..ros.client import NodeProcess, VprClient, candidate_rows, compressed_msg, image_msg
    params = {'model.name': args.model, 'model.weights': str(args.weights or ''), 'encoder.backend': args.backend,
              'encoder.device': args.device, 'encoder.precision': args.precision,
              'encoder.num_threads': args.threads, 'map.path': str(map_path), 'loop_closure.mode': 'localization',
              # every frame accepted, so that each one times the whole path to ~/candidates
              'loop_closure.min_score': -1.0, 'loop_closure.false_alarm_rate': 0.0,
              'loop_closure.temporal_consistency': 1, 'image_transport': args.transport,
              'diagnostics.window': 100_000, 'diagnostics.period_sec': 1.0}
    node = NodeProcess(domain, params=params, log_path=folder / f'node_{rate:g}hz.log')
    client = VprClient(domain, image_reliable=False, keep_messages=False)
    latencies: list[tuple[float, float]] = []   # (publish wall time, end-to-end ms)
    lock = threading.Lock()

    def on_message(box: str, received) -> None:
        # ~/candidates: every accepted match, loops and relocalizations alike (a localization map's
        # matches are relocalizations; its keyframes have no poses, so ~/relocalization stays silent)
        if box == 'candidates':
            now = time.time()
            query = candidate_rows(received.msg)[0]['query_stamp']
            with lock:
                latencies.append((query, (now - query) * 1e3))
    client.on_message(on_message)
    try:
        if not client.wait_for_node(300.0, compressed=args.transport == 'compressed'):
            raise BoqVprError(f'vpr_node did not start; see {node.log_path}:\n{node.log()[-3000:]}')
        proc = psutil.Process(node.pid)
        pub = client.pub_compressed if args.transport == 'compressed' else client.pub_image
        make = (lambda img, t: compressed_msg(img, t, 'jpeg')) if args.transport == 'compressed' else image_msg
        rss: list[tuple[float, float]] = []
        period = 1.0 / rate
        t_start = time.monotonic()
        next_t, sent, last_rss = t_start, 0, 0.0
        while time.monotonic() - t_start < args.duration:
            now = time.monotonic()
            if now < next_t:
                time.sleep(next_t - now)
            pub.publish(make(queries[sent % len(queries)], time.time_ns()))
            sent += 1
            next_t += period
            if time.monotonic() - last_rss >= 1.0:
                last_rss = time.monotonic()
                rss.append((last_rss - t_start, proc.memory_info().rss / 2 ** 20))
        elapsed = time.monotonic() - t_start
        time.sleep(3.0)   # let the last frames through and diagnostics refresh
        diag = client.diagnostics() or {}
    finally:
        client.close()
        node.stop()
    with lock:
        lat = sorted(latencies)
    e2e = [ms for _, ms in lat]
    thirds = np.array_split(np.asarray(e2e), 3) if len(e2e) >= 3 else []

    def stage(name: str) -> dict[str, float]:
        return {q: float(diag.get(f'latency_ms.{name}.{q}', 'nan')) for q in ('p50', 'p99')}
    rss_mib = [m for _, m in rss]
    result = {
        'rate_hz': rate, 'seconds': round(elapsed, 2), 'frames_published': sent,
        'frames_received': int(diag.get('frames_received', 0)),
        'frames_processed': int(diag.get('frames_processed', 0)),
        'frames_dropped': int(diag.get('frames_dropped', 0)), 'frames_rejected': int(diag.get('frames_rejected', 0)),
        'candidates_received': len(e2e), 'processed_hz': int(diag.get('frames_processed', 0)) / max(elapsed, 1e-9),
        'end_to_end': latency_summary(e2e, suffix='_ms'),
        'end_to_end_p50_by_third_ms': [float(np.percentile(t, 50)) for t in thirds if len(t)],
        'node_stages_ms': {s: stage(s) for s in ('queue', 'convert', 'encode', 'detect', 'publish', 'total',
                                                 'overhead')},
        'node_rss_mib': {'first': rss_mib[0] if rss_mib else None, 'last': rss_mib[-1] if rss_mib else None,
                         'max': max(rss_mib) if rss_mib else None, 'series': rss},
        'backend': diag.get('backend'), 'device': diag.get('device'), 'precision': diag.get('precision'),
        'map_size': int(diag.get('map_size', 0)),
    }
    return result


def run(args: argparse.Namespace) -> int:
    from ..inputs.images import list_images, load_image
    domain = args.domain_id if args.domain_id is not None else 100 + os.getpid() % 100
    queries = [load_image(f) for f in list_images(args.query_images)[:args.map_size]]
    if not queries:
        raise BoqVprError(f'no query images in {args.query_images}')
    results = []
    with tempfile.TemporaryDirectory(prefix='boq_vpr_bench_node_') as tmp:
        folder = Path(tmp)
        map_path, map_size = _build_map(args, folder)
        for rate in args.rates:
            r = _run_rate(args, rate, map_path, queries, domain, folder)
            results.append(r)
            st = r['node_stages_ms']
            print(f'{args.model} {r["backend"]}/{r["device"]}/{r["precision"]} map {map_size}  {rate:5.1f} Hz in: '
                  f'published {r["frames_published"]}, received {r["frames_received"]}, processed '
                  f'{r["frames_processed"]} ({r["processed_hz"]:.1f} Hz), dropped {r["frames_dropped"]}\n'
                  f'    end-to-end publish->~/candidates p50 {r["end_to_end"].get("p50_ms", float("nan")):.1f} ms '
                  f'p99 {r["end_to_end"].get("p99_ms", float("nan")):.1f} ms; p50 by thirds '
                  f'{", ".join(f"{x:.1f}" for x in r["end_to_end_p50_by_third_ms"])} ms\n'
                  f'    node: encode p50 {st["encode"]["p50"]:.2f} / p99 {st["encode"]["p99"]:.2f} ms, overhead '
                  f'(convert+detect+publish) p50 {st["overhead"]["p50"]:.2f} / p99 {st["overhead"]["p99"]:.2f} ms '
                  f'[convert {st["convert"]["p50"]:.2f}, detect {st["detect"]["p50"]:.2f}, publish '
                  f'{st["publish"]["p50"]:.2f}], queue wait p50 {st["queue"]["p50"]:.2f} ms\n'
                  f'    node RSS first {r["node_rss_mib"]["first"]:.0f} MiB, last {r["node_rss_mib"]["last"]:.0f} MiB, '
                  f'max {r["node_rss_mib"]["max"]:.0f} MiB', flush=True)
    out = {'benchmark': 'node', 'machine': machine_info(), 'settings': {
        'model': args.model, 'weights': str(args.weights) if args.weights else 'random', 'backend': args.backend,
        'device': args.device, 'precision': args.precision, 'threads': args.threads, 'duration_s': args.duration,
        'transport': args.transport, 'map_images': str(args.map_images), 'query_images': str(args.query_images),
        'map_size': args.map_size}, 'results': results}
    write_json(args.out, out)
    print(f'saved {args.out}')
    return 0
