"""``boq-vpr bench encoder``: ms/image (p50, p90) and images/s of the encoder, per model, backend,
precision and batch size, all in one run so the figures compare directly (ratios to the first
backend given, normally the eager PyTorch reference)."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from ..backends import backend_names
from ..benchmark import machine_info, peak_rss_mib, percentiles_ms, time_calls
from ..images import list_images, load_image
from ..models.config import MODEL_CONFIGS
from .common import size_arg, write_json

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--models', nargs='+', default=['resnet50_16384', 'resnet18_1024'],
                        choices=sorted(MODEL_CONFIGS), help='configurations to time')
    parser.add_argument('--backends', nargs='+', default=['torch'], choices=backend_names()[1:],
                        help='backends (the first is the reference for ratios)')
    parser.add_argument('--precisions', nargs='+', default=['fp32'], help='precisions to try per backend')
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1], help='batch sizes (default: 1)')
    parser.add_argument('--image-size', type=size_arg, default=None, help='override the input size (HxW)')
    parser.add_argument('--device', default='cpu', help='cpu (default) or cuda')
    parser.add_argument('--iterations', type=int, default=10, help='timed calls per setting (default: 10)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed calls first (default: 2)')
    parser.add_argument('--images', type=Path, default=None,
                        help='folder of real images to encode (default: random 640x480 camera frames)')
    parser.add_argument('--weights', type=Path, default=None, help='weight file (only for the first model)')
    parser.add_argument('--out', type=Path, default=Path('bench/encoder.json'), help='JSON output')


def _inputs(folder: Path | None, n: int) -> list[np.ndarray]:
    if folder is not None:
        files = list_images(folder)[:n]
        return [load_image(p) for p in files]
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(n)]


def run(args: argparse.Namespace) -> int:
    from ..encoder import Encoder
    results = []
    images = _inputs(args.images, max(args.batch_sizes))
    for mi, model in enumerate(args.models):
        reference: dict[int, float] = {}
        for backend in args.backends:
            for precision in args.precisions:
                try:
                    enc = Encoder(model, weights=args.weights if mi == 0 else None, backend=backend,
                                  device=args.device, precision=precision, image_size=args.image_size,
                                  batch_size=max(args.batch_sizes))
                except Exception as err:  # report and go on: a missing backend must not hide the others
                    log.warning('%s/%s/%s unavailable: %s', model, backend, precision, err)
                    results.append({'model': model, 'backend': backend, 'precision': precision, 'error': str(err)})
                    continue
                for bs in args.batch_sizes:
                    batch = images[:bs]
                    pre = enc.preprocessor.batch(batch)
                    infer = percentiles_ms(time_calls(lambda: enc.backend.infer(pre), args.iterations, args.warmup), bs)
                    total = percentiles_ms(time_calls(lambda: enc.encode(batch), max(3, args.iterations // 3), 1), bs)
                    row = {'model': model, 'backend': backend, 'precision': precision, 'batch': bs,
                           'image_size': list(enc.config.image_size), 'device': enc.backend.device,
                           'infer': infer, 'end_to_end': total,
                           'images_per_s': 1e3 / infer['p50_ms'], 'peak_rss_mib': peak_rss_mib()}
                    reference.setdefault(bs, infer['p50_ms'])
                    row['speedup_vs_first'] = reference[bs] / infer['p50_ms']
                    results.append(row)
                    print(f'{model:16s} {backend:12s} {precision:5s} b{bs:<3d} {row["image_size"][0]}x{row["image_size"][1]}  '
                          f'p50 {infer["p50_ms"]:8.1f} ms/img  p90 {infer["p90_ms"]:8.1f}  '
                          f'{row["images_per_s"]:7.1f} img/s  x{row["speedup_vs_first"]:.2f}  '
                          f'(with preprocessing p50 {total["p50_ms"]:.1f} ms/img)', flush=True)
                del enc
    out = {'benchmark': 'encoder', 'machine': machine_info(), 'settings': {
        'iterations': args.iterations, 'warmup': args.warmup, 'images': str(args.images) if args.images else 'random 640x480'},
        'results': results}
    write_json(args.out, out)
    print(f'saved {args.out}')
    return 0 if any('infer' in r for r in results) else 1
