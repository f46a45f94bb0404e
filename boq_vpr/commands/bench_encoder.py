r"""``boq-vpr bench encoder``: the speed of encoder backends beside eager PyTorch FP32.

Milliseconds per image (p50, p90) and images/s of encoder backends, per model, backend, precision,
image size and batch size, beside the eager PyTorch FP32 reference in the same run: every variant is
built first, then timed round-robin (one call each per round) so that load from other processes spreads over all
of them; ratios are to the reference at the same batch and size, and each variant's descriptors are
compared with the reference's (cosine).

Example::

    boq-vpr bench encoder --models resnet50_16384 --backends onnxruntime:fp32 openvino:bf16 torch:bf16 \
        --batch-sizes 1 8 --images data/summer --out bench/encoder.json
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..evaluation.benchmark import machine_info, peak_rss_mib
from ..values import latency_summary
from .common import parse_backend_spec, size_arg, write_json

log = logging.getLogger(__name__)

REFERENCE = ('torch', 'fp32', {'mode': 'eager'})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..models.config import MODEL_CONFIGS
    parser.add_argument('--models', nargs='+', default=['resnet50_16384'], choices=sorted(MODEL_CONFIGS),
                        help='configurations to time (default: resnet50_16384)')
    parser.add_argument('--backends', nargs='+', default=['torch:fp32', 'onnxruntime:fp32', 'openvino:auto',
                                                          'torch:auto'],
                        help='variants as name[:precision[:key=value,...]] (precision auto: the backend\'s '
                             'choice; options go to the backend, e.g. onnxruntime:fp32:optimization=basic); eager '
                             'PyTorch FP32 is always timed first as the reference')
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 8], help='batch sizes (default: 1 8)')
    parser.add_argument('--image-sizes', type=size_arg, nargs='+', default=None,
                        help='input sizes HxW (default: each configuration\'s own)')
    parser.add_argument('--device', default='cpu', help='cpu (default) or cuda')
    parser.add_argument('--rounds', type=int, default=10, help='timed calls per variant (default: 10)')
    parser.add_argument('--warmup', type=int, default=2, help='untimed calls first (default: 2)')
    parser.add_argument('--images', type=Path, default=None,
                        help='folder of real images to encode (default: random 640x480 camera frames)')
    parser.add_argument('--weights', type=Path, default=None, help='weight file (only for the first model)')
    parser.add_argument('--calibration', type=Path, default=None, help='calibration images for int8 variants')
    parser.add_argument('--threads', type=int, default=None,
                        help='CPU threads for every variant (torch intra-op threads, onnxruntime/openvino '
                             'threads; default: physical cores)')
    parser.add_argument('--out', type=Path, default=Path('bench/encoder.json'), help='JSON output')


def _inputs(folder: Path | None, n: int) -> list[np.ndarray]:
    if folder is not None:
        from ..inputs.images import list_images, load_image
        files = list_images(folder)
        files = [files[int(i)] for i in np.linspace(0, len(files) - 1, min(n, len(files)))]
        return [load_image(p) for p in files]
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(n)]


def variant_spec(text: str) -> tuple[str, str, dict]:
    """``name[:precision[:key=value,...]]`` -> (name, precision, backend options).

    Options tune one variant, e.g. ``onnxruntime:fp32:optimization=basic,threads=1,spin=1``; values
    are parsed as int or bool where they look like one.
    """
    head, _, extra = text.partition(':')
    precision, _, extra = extra.partition(':')
    name, precision = parse_backend_spec(f'{head}:{precision}' if precision else head)
    options: dict = {}
    for item in filter(None, extra.split(',')):
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise ConfigError(f'variant option {item!r} in {text!r}: expected key=value')
        options[key] = int(value) if value.isdigit() else {'true': True, 'false': False}.get(value.lower(), value)
    return name, precision, options


def _build(model: str, spec: tuple[str, str, dict], args, weights, size):
    from ..encoder import Encoder
    name, precision, extra = spec
    options = {'mode': 'graph', **({'threads': args.threads} if args.threads else {}), **extra}
    if args.calibration is not None:
        options['calibration'] = args.calibration
    return Encoder(model, weights=weights, backend=name, device=args.device, precision=precision,
                   image_size=size, batch_size=max(args.batch_sizes), **options)


def run(args: argparse.Namespace) -> int:
    from ..backends.capabilities import cpu_supports_bf16, physical_cores
    from ..models.config import MODEL_CONFIGS
    specs = [variant_spec(s) for s in args.backends]
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f'--threads must be >= 1, got {args.threads}')
        import torch
        torch.set_num_threads(args.threads)
    load_before = _loadavg()
    if load_before and load_before[0] > physical_cores():
        log.warning('load average %.1f on %d cores: other processes compete for the CPU, figures will be noisy '
                    '(ratios less so: all variants are timed round-robin)', load_before[0], physical_cores())
    images = _inputs(args.images, max(args.batch_sizes))
    results: list[dict] = []
    for mi, model in enumerate(args.models):
        weights = args.weights if mi == 0 else None
        for size in (args.image_sizes or [tuple(MODEL_CONFIGS[model].image_size)]):
            variants = []
            for spec in [REFERENCE, *specs]:
                label = f'{spec[0]}:{spec[1]}' + (' (eager)' if spec is REFERENCE else '') + (
                    ':' + ','.join(f'{k}={v}' for k, v in spec[2].items()) if spec[2] and spec is not REFERENCE else '')
                try:
                    variants.append((label, spec, _build(model, spec, args, weights, size)))
                except Exception as err:  # report and go on: a missing backend must not hide the others
                    log.warning('%s %s unavailable: %s', model, label, err)
                    results.append({'model': model, 'variant': label, 'image_size': list(size), 'error': str(err)})
            if not variants or variants[0][1] is not REFERENCE:
                continue
            for bs in args.batch_sizes:
                batch = images[:bs]
                pre = variants[0][2].preprocessor.batch(batch)
                t0 = time.perf_counter()
                variants[0][2].preprocessor.batch(batch)
                pre_ms = 1e3 * (time.perf_counter() - t0) / bs
                outputs = {label: enc.backend.infer(pre) for label, _, enc in variants}
                for _ in range(args.warmup - 1):
                    for _, _, enc in variants:
                        enc.backend.infer(pre)
                samples: dict[str, list[float]] = {label: [] for label, _, _ in variants}
                for _ in range(args.rounds):
                    for label, _, enc in variants:
                        t0 = time.perf_counter()
                        enc.backend.infer(pre)
                        samples[label].append(time.perf_counter() - t0)
                ref_label = variants[0][0]
                ref_out = _normalize(outputs[ref_label])
                ref_p50 = _per_image_ms(samples[ref_label], bs)['p50_ms']
                for label, spec, enc in variants:
                    stats = _per_image_ms(samples[label], bs)
                    cos = (_normalize(outputs[label]) * ref_out).sum(1)
                    row = {'model': model, 'variant': label, 'backend': enc.backend.name,
                           'precision': enc.backend.precision, 'device': enc.backend.device, 'batch': bs,
                           'image_size': list(enc.config.image_size), 'infer': stats,
                           'images_per_s': 1e3 / stats['p50_ms'], 'speedup_vs_eager_fp32': ref_p50 / stats['p50_ms'],
                           'best_ms': 1e3 * min(samples[label]) / bs,
                           'speedup_best_vs_eager_fp32': min(samples[ref_label]) / min(samples[label]),
                           'cosine_vs_eager_min': float(cos.min()), 'preprocess_ms_per_image': pre_ms,
                           'describe': enc.backend.describe()}
                    results.append(row)
                    print(f'{model:15s} {label:22s} {row["precision"]:5s} b{bs:<2d} {size[0]}x{size[1]}  '
                          f'p50 {stats["p50_ms"]:7.1f} ms/img  p90 {stats["p90_ms"]:7.1f}  '
                          f'{row["images_per_s"]:6.2f} img/s  x{row["speedup_vs_eager_fp32"]:.2f} vs eager  '
                          f'(best {row["best_ms"]:.1f} ms, x{row["speedup_best_vs_eager_fp32"]:.2f})  '
                          f'cos>={row["cosine_vs_eager_min"]:.6f}', flush=True)
            del variants
    out = {'benchmark': 'encoder', 'machine': {**machine_info(), 'physical_cores': physical_cores(),
                                               'cpu_bf16': cpu_supports_bf16(),
                                               'loadavg_before': load_before, 'loadavg_after': _loadavg()},
           'peak_rss_mib': peak_rss_mib(),
           'settings': {'rounds': args.rounds, 'warmup': args.warmup, 'device': args.device,
                        'images': str(args.images) if args.images else 'random 640x480',
                        'timing': 'round-robin over variants in one process; ms per image = call time / batch',
        'threads': args.threads or physical_cores()},
           'results': results}
    write_json(args.out, out)
    print(f'saved {args.out}')
    return 0 if any('infer' in r for r in results) else 1


def _per_image_ms(samples_s: list[float], batch: int) -> dict:
    """``latency_summary`` (keys ``*_ms``) of call times in seconds, per image of a batch of ``batch``."""
    return latency_summary(np.asarray(samples_s, np.float64) * 1e3 / batch, suffix='_ms')


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
