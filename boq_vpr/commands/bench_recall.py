"""``boq-vpr bench recall``: recall@1/5/10 of frame-aligned traversals.

Winter queries against the summer map, a query's true matches within ``--tolerance`` frames), for
several models and the pixel baseline (``boq_vpr.evaluation.pixel_baseline``) measured in the same
run on the same frames.

Default: the Nordland frames held out from the training of ``resnet18_nordland`` (2400-3575), the
shipped model, the untrained model of the same configuration, and the baseline::

    boq-vpr bench recall --out bench/recall_nordland.json
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..evaluation.metrics import aligned_recalls
from ..inputs.nordland import NORDLAND_HELD_OUT, load_frames
from ..inputs.sample_data import HELD_OUT_DIR
from .common import frame_range, parse_model_spec, write_json

log = logging.getLogger(__name__)

KS = (1, 5, 10)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..models.config import RANDOM_WEIGHTS
    parser.add_argument('--data', type=Path, default=HELD_OUT_DIR,
                        help='folder with frame-aligned summer/ (map) and winter/ (queries) images, named as in '
                             'the trimmed Nordland set (default: the held-out section shipped with boq_vpr)')
    parser.add_argument('--map-folder', default='summer', help='sub-folder of the map images (default: summer)')
    parser.add_argument('--query-folder', default='winter', help='sub-folder of the queries (default: winter)')
    parser.add_argument('--frames', type=frame_range, default=NORDLAND_HELD_OUT,
                        help='frame indices START:END in file order (default 2400:3576, the held-out section)')
    parser.add_argument('--every', type=int, default=1, help='use every n-th frame of the range (default: 1)')
    parser.add_argument('--tolerance', type=int, default=2, help='true matches within this many frames (default: 2)')
    parser.add_argument('--models', nargs='+', default=['resnet18_nordland', f'resnet18_nordland:{RANDOM_WEIGHTS}'],
                        help='NAME (shipped weights, else random), NAME:random or NAME:WEIGHTS_FILE '
                             '(default: resnet18_nordland and its untrained twin)')
    parser.add_argument('--no-baseline', action='store_true', help='skip the pixel baseline')
    parser.add_argument('--backend', default='torch', help='encoder backend (default: torch)')
    parser.add_argument('--precision', default='fp32', help='encoder precision (default: fp32)')
    parser.add_argument('--out', type=Path, default=Path('bench/recall_nordland.json'), help='JSON output')


def run(args: argparse.Namespace) -> int:
    from ..encoder import Encoder
    from ..evaluation.pixel_baseline import DEFAULT_PATCH, DEFAULT_SIZE, pixel_descriptors
    if args.every < 1 or args.tolerance < 0:
        raise ConfigError('--every must be >= 1 and --tolerance >= 0')
    frames = args.frames[::args.every]
    specs = [parse_model_spec(s) for s in args.models]
    map_images = load_frames(args.data / args.map_folder, frames)
    query_images = load_frames(args.data / args.query_folder, frames)
    index = np.asarray(frames)
    tol = args.tolerance
    rows = []
    for name, weights in specs:
        enc = Encoder(name, weights=weights, backend=args.backend, device='cpu', precision=args.precision,
                      batch_size=32)
        t0 = time.perf_counter()
        m, q = enc.encode(map_images), enc.encode(query_images)
        seconds = time.perf_counter() - t0
        r = aligned_recalls(m, q, tol, KS, map_index=index, query_index=index)
        rows.append({'variant': f'{name} ({"random weights" if enc.weights is None else enc.weights.name})',
                     'model': name, 'weights': str(enc.weights) if enc.weights else None,
                     'descriptor_dim': enc.descriptor_dim, 'encode_s': seconds,
                     **{f'R@{k}': v for k, v in r.items()}})
    if not args.no_baseline:
        t0 = time.perf_counter()
        m, q = pixel_descriptors(map_images), pixel_descriptors(query_images)
        seconds = time.perf_counter() - t0
        r = aligned_recalls(m, q, tol, KS, map_index=index, query_index=index)
        rows.append({'variant': f'pixels {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}, patch-normalized {DEFAULT_PATCH}, cosine',
                     'model': 'pixel_baseline', 'weights': None, 'descriptor_dim': int(m.shape[1]),
                     'encode_s': seconds, **{f'R@{k}': v for k, v in r.items()}})
    result = {'data': str(args.data), 'map': args.map_folder, 'queries': args.query_folder,
              'frames': [frames[0], frames[-1]], 'every': args.every, 'count': len(frames),
              'tolerance_frames': tol, 'backend': args.backend, 'precision': args.precision, 'results': rows}
    print(f'{args.query_folder} queries against the {args.map_folder} map, frames {frames[0]}-{frames[-1]} '
          f'(every {args.every}: {len(frames)}), true match within {tol} frames')
    print(f'{"variant":<58} {"dim":>6} {"R@1":>6} {"R@5":>6} {"R@10":>6}')
    for row in rows:
        print(f'{row["variant"]:<58} {row["descriptor_dim"]:>6} {row["R@1"]:>6.3f} {row["R@5"]:>6.3f} '
              f'{row["R@10"]:>6.3f}')
    write_json(args.out, result)
    print(f'saved {args.out}')
    return 0
