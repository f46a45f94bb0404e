r"""``boq-vpr verify``: whether other backends compute what eager PyTorch computes, on real images.

Encodes the same database and query images with the reference (eager PyTorch FP32) and each
backend given as ``name[:precision]``; reports per backend the cosine similarity of descriptors
(min and mean over all images) and the share of queries whose top-1 database match is the
reference's (a different match that ties with it in the reference's scores counts as the same).
Exits 1 when a backend's minimum cosine falls below 0.9999 (FP32) or 0.999 (reduced precision), or
its top-1 agreement below ``--min-top1``; a backend that cannot run is reported and counts as a
failure.

Example (Nordland: summer as the database, winter as queries)::

    boq-vpr verify --model resnet18_1024 --database data/summer --queries data/winter \
        --backends onnxruntime:fp32 openvino:bf16 torch:bf16
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from ..errors import ImageError
from .common import add_model_args, parse_backend_spec, write_json

log = logging.getLogger(__name__)

THRESHOLDS = {'fp32': 0.9999, 'fp16': 0.999, 'bf16': 0.999, 'int8': 0.999}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser)
    parser.add_argument('--database', type=Path, required=True, help='folder of database (map) images')
    parser.add_argument('--queries', type=Path, required=True, help='folder of query images of the same places')
    parser.add_argument('--limit', type=int, default=64, help='images per folder, evenly spaced (default: 64)')
    parser.add_argument('--backends', nargs='+', required=True,
                        help='backends to check, as name[:precision], e.g. onnxruntime:fp32 openvino:bf16')
    parser.add_argument('--device', default='cpu', help='device of the backends (default: cpu)')
    parser.add_argument('--onnx', type=Path, default=None, help='ONNX file for onnxruntime/openvino/tensorrt')
    parser.add_argument('--calibration', type=Path, default=None, help='calibration images for int8')
    parser.add_argument('--min-top1', type=float, default=1.0,
                        help='required share of queries with the reference\'s top-1 match (default: 1.0)')
    parser.add_argument('--tie-tolerance', type=float, default=1e-6,
                        help='a different top-1 scoring within this of the reference\'s top-1 (in the reference\'s '
                             'similarities) is a tie, not a disagreement (default: 1e-6)')
    parser.add_argument('--out', type=Path, default=None, help='JSON report (default: none)')


def _sample(folder: Path, limit: int) -> list[Path]:
    from ..inputs.images import list_images
    files = list_images(folder)
    if not files:
        raise ImageError(f'no images in {folder}')
    if limit and len(files) > limit:
        files = [files[int(i)] for i in np.linspace(0, len(files) - 1, limit)]
    return files


def reference_margin(reference: tuple[np.ndarray, np.ndarray]) -> float:
    """Median over queries of the reference's top-1 minus top-2 similarity."""
    ref_db, ref_q = reference
    if ref_db.shape[0] < 2:
        return 0.0
    top2 = np.sort(ref_q @ ref_db.T, axis=1)[:, -2:]
    return float(np.median(top2[:, 1] - top2[:, 0]))


def compare(reference: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray],
            tie_tolerance: float = 1e-6) -> dict:
    """Cosine similarity of matching descriptors and top-1 agreement of query -> database retrieval.

    A query agrees when the backend's top-1 is the reference's, or scores within ``tie_tolerance``
    of it under the reference's own similarities (a tie: e.g. two identical database images).
    Disagreements list the reference's score gap between the two choices.
    """
    ref_db, ref_q = reference
    db, q = other
    assert ref_db.shape == db.shape and ref_q.shape == q.shape, 'descriptor sets differ in shape'
    cos = np.concatenate([(ref_db * db).sum(1), (ref_q * q).sum(1)])
    scores_ref = ref_q @ ref_db.T
    top_ref = np.argmax(scores_ref, axis=1)
    top = np.argmax(q @ db.T, axis=1)
    rows = np.arange(len(top))
    gap = scores_ref[rows, top_ref] - scores_ref[rows, top]
    agree = gap <= tie_tolerance
    return {'cosine_min': float(cos.min()), 'cosine_mean': float(cos.mean()),
            'top1_agreement': float(agree.mean()), 'top1_identical': float((top == top_ref).mean()),
            'queries': int(len(top)), 'tie_tolerance': tie_tolerance,
            'reference_top1_margin_median': reference_margin(reference),
            'disagreements': [{'query': int(i), 'reference_top1': int(top_ref[i]), 'top1': int(top[i]),
                               'reference_score_gap': float(gap[i])} for i in np.where(~agree)[0]]}


def run(args: argparse.Namespace) -> int:
    from ..encoder import Encoder
    from ..inputs.images import load_image
    specs = [parse_backend_spec(s) for s in args.backends]
    db_images = [load_image(p) for p in _sample(args.database, args.limit)]
    q_images = [load_image(p) for p in _sample(args.queries, args.limit)]
    common = dict(weights=args.weights, image_size=args.image_size, batch_size=8)
    ref = Encoder(args.model, backend='torch', device=args.device, precision='fp32', mode='eager', **common)
    reference = (ref.encode(db_images), ref.encode(q_images))
    del ref
    print(f'reference: torch eager fp32, {len(db_images)} database and {len(q_images)} query images '
          f'({args.database}, {args.queries})')
    rows, failed = [], False
    for name, precision in specs:
        options = {}
        if args.onnx is not None and name != 'torch':
            options['onnx_path'] = args.onnx
        if args.calibration is not None:
            options['calibration'] = args.calibration
        try:
            enc = Encoder(args.model, backend=name, device=args.device, precision=precision, **common, **options)
        except Exception as err:  # report and go on: one missing backend must not hide the others
            log.error('%s:%s cannot run: %s', name, precision, err)
            rows.append({'backend': name, 'precision': precision, 'error': str(err), 'passed': False})
            failed = True
            continue
        row = {'backend': name, 'precision': enc.backend.precision, 'device': enc.backend.device,
               **compare(reference, (enc.encode(db_images), enc.encode(q_images)), args.tie_tolerance)}
        row['threshold'] = THRESHOLDS[row['precision']]
        row['passed'] = row['cosine_min'] >= row['threshold'] and row['top1_agreement'] >= args.min_top1
        failed |= not row['passed']
        rows.append(row)
        print(f'{name:12s} {row["precision"]:5s} cosine min {row["cosine_min"]:.6f} mean {row["cosine_mean"]:.6f} '
              f'(>= {row["threshold"]})  top-1 agreement {row["top1_agreement"]:.3f} of {row["queries"]} '
              f'(>= {args.min_top1}; identical {row["top1_identical"]:.3f})  {"PASS" if row["passed"] else "FAIL"}',
              flush=True)
        for d in row['disagreements'][:5]:
            print(f'    query {d["query"]}: top-1 {d["top1"]} instead of {d["reference_top1"]}, '
                  f'{d["reference_score_gap"]:.2e} below it in the reference', flush=True)
        del enc
    margin = reference_margin(reference)
    print(f'reference top-1/top-2 score margin, median over queries: {margin:.2e} (top-1 agreement means little '
          'when perturbations of this size flip it, as with random weights)')
    if args.out is not None:
        write_json(args.out, {'verify': rows, 'reference_top1_margin_median': margin, 'model': args.model,
                              'database': str(args.database),
                              'queries': str(args.queries), 'images': [len(db_images), len(q_images)]})
        print(f'saved {args.out}')
    return 1 if failed else 0
