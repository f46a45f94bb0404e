"""``boq-vpr bench recall``: recall@1/5/10 of frame-aligned traversals (winter queries against the
summer map, a query's true matches within ``--tolerance`` frames), for several models and the
pixel baseline (``boq_vpr.evaluation.pixel_baseline``) measured in the same run on the same frames.

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
from ..inputs.images import load_image
from ..evaluation.metrics import recall_at_k, retrieval_hits
from ..models.checkpoint import RANDOM_WEIGHTS
from ..models.config import MODEL_CONFIGS
from ..inputs.sample_data import HELD_OUT_DIR, NORDLAND_HELD_OUT, frame_name
from .common import write_json

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
# the whole trimmed Nordland set (both traversals, 3576 frames each), next to the repository
DEFAULT_DATA = ROOT.parent / 'shared' / 'data' / 'nordland_trimmed'
KS = (1, 5, 10)


def frame_range(text: str) -> range:
    """'2400:3576' -> range(2400, 3576) (frame indices in file order, end exclusive)."""
    try:
        a, b = (int(x) for x in text.split(':'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected START:END frame indices, got {text!r}') from None
    if not 0 <= a < b:
        raise argparse.ArgumentTypeError(f'need 0 <= START < END, got {text!r}')
    return range(a, b)


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def parse_model_spec(spec: str) -> tuple[str, str | None]:
    name, _, weights = spec.partition(':')
    if name not in MODEL_CONFIGS:
        raise ConfigError(f'unknown model configuration {name!r} in {spec!r}; valid: {", ".join(sorted(MODEL_CONFIGS))}')
    return name, (weights or None)


def aligned_recalls(map_desc: np.ndarray, query_desc: np.ndarray, tolerance: int, ks=KS,
                    map_index: np.ndarray | None = None, query_index: np.ndarray | None = None) -> dict[int, float]:
    """Recall@k of frame-aligned traversals: query ``i`` matches map frames within ``tolerance``
    frames of it (``*_index``: frame indices of the rows, default 0..N-1), by cosine."""
    assert map_desc.ndim == 2 and query_desc.ndim == 2 and map_desc.shape[1] == query_desc.shape[1]
    mi = np.arange(len(map_desc)) if map_index is None else np.asarray(map_index)
    qi = np.arange(len(query_desc)) if query_index is None else np.asarray(query_index)
    sims = query_desc @ map_desc.T
    k = min(max(ks), len(map_desc))
    ranked = np.argsort(-sims, axis=1, kind='stable')[:, :k]
    positives = np.abs(qi[:, None] - mi[None, :]) <= tolerance
    return recall_at_k(retrieval_hits(ranked, positives), positives.any(axis=1), ks)


def load_frames(folder: Path, frames: range) -> list[np.ndarray]:
    paths = [folder / frame_name(i) for i in frames]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f'{len(missing)} frame(s) missing, first {missing[0]}; check --data and --frames')
    return [load_image(p) for p in paths]


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
        enc = Encoder(name, weights=weights, backend=args.backend, device='cpu', precision=args.precision, batch_size=32)
        t0 = time.perf_counter()
        m, q = enc.encode(map_images), enc.encode(query_images)
        seconds = time.perf_counter() - t0
        r = aligned_recalls(m, q, tol, map_index=index, query_index=index)
        rows.append({'variant': f'{name} ({"random weights" if enc.weights is None else enc.weights.name})',
                     'model': name, 'weights': str(enc.weights) if enc.weights else None,
                     'descriptor_dim': enc.descriptor_dim, 'encode_s': seconds,
                     **{f'R@{k}': v for k, v in r.items()}})
    if not args.no_baseline:
        t0 = time.perf_counter()
        m, q = pixel_descriptors(map_images), pixel_descriptors(query_images)
        seconds = time.perf_counter() - t0
        r = aligned_recalls(m, q, tol, map_index=index, query_index=index)
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
        print(f'{row["variant"]:<58} {row["descriptor_dim"]:>6} {row["R@1"]:>6.3f} {row["R@5"]:>6.3f} {row["R@10"]:>6.3f}')
    write_json(args.out, result)
    print(f'saved {args.out}')
    return 0
