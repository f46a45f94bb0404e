#!/usr/bin/env python3
"""The GPU check: everything boq_vpr does on a CUDA GPU, measured in one run of a few minutes.

Runs on an offline GPU machine with a preinstalled CUDA torch (``scripts/gpu_check_offline.sh``
installs the project and the few wheels it lacks, then calls this), or on any CUDA machine:

    python scripts/gpu_check.py --out gpu_check_out            # on a GPU (about 4-7 minutes)
    python scripts/gpu_check.py --cpu-dry-run --out /tmp/dry   # here, on the CPU, tiny sizes (seconds)

What it measures, each against eager FP32 on the same GPU and in the same process:

- inference (``inference:<model>``): torch CUDA fp32, fp16 and bf16, each eager (the model as
  written, autocast), graph (``TorchBackend(mode='graph')``: the plain-op inference graph, what
  ``backend: torch`` runs), cudagraph (that graph captured in one CUDA graph per batch size and
  replayed), for ``resnet50_16384`` at 384x384 and ``dinov2_12288`` at 322x322, batch 1 and 8: ms per
  image from a CPU batch (what the Encoder hands a backend) and from a GPU-resident batch; parity of
  every variant with CPU FP32 on the same images (min cosine, top-1 agreement of queries against a
  database); TensorRT and ONNX Runtime CUDA variants where those are installed;
- ``training_steps``: training steps of the ``resnet50_16384`` preset (320x320, P x K = 160 x 4, or the
  largest P that fits, stated; 16-mixed: fp16 autocast and a gradient scaler; AdamW; only layer3 of the
  backbone trained; multi-similarity loss and miner): images/s (GPU steps on a GPU-resident batch,
  data loading excluded) and peak GPU memory;
- ``node_latency``: the node's per-frame pipeline without DDS (``Encoder`` with batch 1 -> 
  ``LoopClosureDetector`` over a ``MapDatabase`` in slam mode, shipped detector defaults), 640x480
  frames at 10 Hz stamps, with the fastest correct variant: encode, detect and total per frame;
- ``training_run``: the real training code (``training.run.TrainingRun``, Lightning) on the
  ``cpu_small`` preset (resnet18_1024 at 160x160, 16 x 4) with 16-mixed on the GPU for a few hundred
  steps on generated places: loss per epoch (going down?) and throughput;
- ``gpu_tests``: ``pytest test/test_gpu.py`` (CUDA backends against CPU FP32 on generated images);
- ``compile``: ``torch.compile`` of the inference graph (fp16), last and only while the time budget
  lasts (each model compiles once per batch shape).

Weights are random (seeded) unless ``--weights-dir`` holds the official files: figures are about
speed, memory and numerical agreement, not recall. Test images are generated (places of random
texture; a query is a shifted, re-lit, noisy view of its database image) unless ``--images`` names
a folder.

Results under ``--out``: ``gpu_check.json`` (everything, rewritten after every step),
``gpu_check.txt`` (the short table, also printed last) and ``pytest_gpu.txt``; at most 3 files. Steps that cannot run (no TensorRT, no
onnxruntime-gpu, not enough time left) are skipped with their reason, not failed. Exit status 1
when a step failed.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:          # run from a checkout without an installed project
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

log = logging.getLogger('gpu_check')

JSON_NAME = 'gpu_check.json'
TABLE_NAME = 'gpu_check.txt'
PYTEST_NAME = 'pytest_gpu.txt'
FORMAT_VERSION = 1
PRECISIONS = ('fp32', 'fp16', 'bf16')
MODES = ('eager', 'graph', 'cudagraph')
BATCHES = (1, 8)
# what a variant must reach to count as correct (same limits as ``boq-vpr verify``'s defaults)
MIN_COSINE = {'fp32': 0.9999, 'fp16': 0.999, 'bf16': 0.995, 'int8': 0.99}
MIN_TOP1 = 0.95
STEP_NAMES = ('environment', 'images', 'inference:resnet50_16384', 'inference:dinov2_12288', 'training_steps',
              'node_latency', 'training_run', 'gpu_tests', 'compile')


# ---------------------------------------------------------------- plan

@dataclass
class Plan:
    """Sizes of one run: the GPU plan, or the tiny CPU dry run with the same steps and JSON layout."""

    dry_run: bool
    device: str
    places: int                  # database and query images each
    frame_size: tuple[int, int]  # generated camera frames (H, W)
    rounds: int                  # timed calls per variant and batch
    warmup: int
    train_places_per_batch: tuple[int, ...]   # tried in order until one fits
    train_steps: int
    train_size: tuple[int, int]
    node_frames: int
    run_places: int              # training_run: generated places, 4 images each
    run_epochs: int
    run_steps_per_epoch: int
    run_size: tuple[int, int]
    run_places_per_batch: int
    run_workers: int
    compile_backend: str
    models: dict = field(default_factory=dict)   # plan name -> ModelConfig actually run


def make_plan(dry_run: bool) -> Plan:
    from boq_vpr.models import get_config
    from boq_vpr.models.config import ModelConfig
    if not dry_run:
        return Plan(False, 'cuda', places=40, frame_size=(480, 640), rounds=30, warmup=5,
                    train_places_per_batch=(160, 128, 96, 64, 32, 16), train_steps=12, train_size=(320, 320),
                    node_frames=200, run_places=800, run_epochs=6, run_steps_per_epoch=50, run_size=(160, 160),
                    run_places_per_batch=16, run_workers=min(6, os.cpu_count() or 1), compile_backend='inductor',
                    models={'resnet50_16384': get_config('resnet50_16384'),
                            'dinov2_12288': get_config('dinov2_12288')})
    tiny_dino = ModelConfig('dinov2_tiny', 'dinov2_tiny', (56, 56), 96, 64, 8, 2, 4,
                            {'embed_dim': 96, 'depth': 2, 'num_heads': 2, 'img_size': 518, 'patch_size': 14,
                             'mlp_ratio': 4.0, 'init_values': 1.0, 'interpolate_offset': 0.1})
    return Plan(True, 'cpu', places=4, frame_size=(48, 64), rounds=2, warmup=1,
                train_places_per_batch=(4,), train_steps=2, train_size=(64, 64), node_frames=12,
                run_places=16, run_epochs=2, run_steps_per_epoch=2, run_size=(64, 64), run_places_per_batch=4,
                run_workers=0, compile_backend='eager',
                models={'resnet50_16384': get_config('resnet18_1024').with_image_size(64, 64),
                        'dinov2_12288': tiny_dino})


class Budget:
    """Seconds left of the run's time budget."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.monotonic()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)


class Skip(Exception):
    """A step or variant that cannot run here; the message is the reason."""


class Report:
    """The JSON document, built step by step."""

    def __init__(self, plan: Plan, args: argparse.Namespace) -> None:
        self.out: Path | None = args.out
        self.data: dict[str, Any] = {
            'check': 'boq_vpr gpu_check', 'format_version': FORMAT_VERSION,
            'mode': 'cpu-dry-run' if plan.dry_run else 'gpu',
            'started': dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds'),
            'settings': {'budget_s': args.budget_s, 'rounds': plan.rounds, 'warmup': plan.warmup,
                         'batches': list(BATCHES), 'min_cosine': MIN_COSINE, 'min_top1_agreement': MIN_TOP1,
                         'weights': 'random (seeded)' if not args.weights_dir else str(args.weights_dir),
                         'images': str(args.images) if args.images else 'generated places'},
            'steps': [], 'skipped': {}, 'results': {}}

    def step(self, name: str, fn: Callable[[], Any], budget: Budget, need_s: float = 0.0, store: bool = True) -> Any:
        """Run one step; record ok / skipped (with the reason) / failed (with the error); ``store``: its
        result goes into ``results``."""
        entry: dict[str, Any] = {'name': name}
        t0 = time.monotonic()
        print(f'=== {name}', flush=True)
        try:
            if budget.left() < need_s:
                raise Skip(f'time budget: {budget.left():.0f} s left, this step needs about {need_s:.0f} s')
            result = fn()
            entry['status'] = 'ok'
            if result is not None and store:
                self.data['results'][name] = result
        except Skip as err:
            entry['status'] = 'skipped'
            entry['reason'] = str(err)
            result = None
        except Exception as err:  # record and go on: one broken step must not hide the others
            entry['status'] = 'failed'
            entry['reason'] = f'{type(err).__name__}: {err}'
            entry['traceback'] = traceback.format_exc(limit=6)
            result = None
            print(entry['traceback'], file=sys.stderr, flush=True)
        entry['seconds'] = round(time.monotonic() - t0, 2)
        self.data['steps'].append(entry)
        self.save()
        print(f'    {entry["status"]}{": " + entry["reason"] if "reason" in entry else ""} ({entry["seconds"]} s)',
              flush=True)
        return result

    def save(self) -> None:
        """Write the JSON and the table as they stand (after every step, so a run stopped from outside
        keeps what it measured)."""
        if self.out is not None:
            data = _jsonable(self.data)
            (self.out / JSON_NAME).write_text(json.dumps(data, indent=2) + '\n')
            (self.out / TABLE_NAME).write_text(table(data))

    @property
    def failed(self) -> bool:
        return any(s['status'] == 'failed' for s in self.data['steps'])


# ---------------------------------------------------------------- images

def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    import cv2
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    tex = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(6):   # a few edges and blobs so views have structure at several scales
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            cv2.rectangle(tex, (x0, y0), (x0 + int(rng.integers(8, w // 3)), y0 + int(rng.integers(8, h // 3))), color, -1)
        else:
            cv2.circle(tex, (x0, y0), int(rng.integers(4, max(5, h // 6))), color, -1)
    return tex


def _view(tex: np.ndarray, h: int, w: int, rng: np.random.Generator, shift: float) -> np.ndarray:
    th, tw = tex.shape[:2]
    y = int(rng.integers(0, max(1, int((th - h) * shift)) + 1))
    x = int(rng.integers(0, max(1, int((tw - w) * shift)) + 1))
    crop = tex[y:y + h, x:x + w].astype(np.float32) * rng.uniform(0.7, 1.3)
    return np.clip(crop + rng.normal(0, 6, crop.shape), 0, 255).astype(np.uint8)


def generated_places(n: int, size: tuple[int, int], seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` database images and ``n`` queries (query i revisits place i), RGB uint8 of ``size``."""
    rng = np.random.default_rng(seed)
    h, w = size
    db, queries = [], []
    for _ in range(n):
        tex = _texture(rng, int(h * 1.25), int(w * 1.25))
        db.append(_view(tex, h, w, rng, 0.3))
        queries.append(_view(tex, h, w, rng, 1.0))
    return db, queries


def folder_places(folder: Path, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images of a folder, alternately database and query (no ground truth needed: parity only)."""
    from boq_vpr.inputs.images import list_images, load_image
    files = list_images(folder, recursive=True)[:2 * n]
    if len(files) < 4:
        raise Skip(f'{folder}: fewer than 4 images')
    images = [load_image(p) for p in files]
    return images[0::2], images[1::2]


# ---------------------------------------------------------------- variants

class CudaGraphBackend:
    """A ``TorchBackend`` (mode graph) whose inference graph is captured in one CUDA graph per input
    shape and replayed: the same kernels without the per-kernel launch cost. Same ``infer`` contract."""

    name = 'torch'

    def __init__(self, base: Any) -> None:
        if base.graph is None or base.device_obj.type != 'cuda':
            raise Skip('CUDA graphs need the torch backend in graph mode on a CUDA device')
        self.base = base
        self.device = base.device
        self.precision = base.precision
        self.descriptor_dim = base.descriptor_dim
        self.graphs: dict[tuple[int, ...], tuple[Any, torch.Tensor, torch.Tensor]] = {}

    def _capture(self, shape: tuple[int, ...]) -> tuple[Any, torch.Tensor, torch.Tensor]:
        dev = self.base.device_obj
        x = torch.randn(shape, device=dev).to(self.base.dtype).contiguous(memory_format=torch.channels_last)
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(3):
                self.base.graph(x)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            y = self.base.graph(x)
        self.graphs[shape] = (graph, x, y)
        return self.graphs[shape]

    def infer(self, batch: torch.Tensor) -> np.ndarray:
        shape = tuple(batch.shape)
        graph, x, y = self.graphs.get(shape) or self._capture(shape)
        with torch.inference_mode():
            x.copy_(batch.to(self.base.device_obj, non_blocking=True))
            graph.replay()
            return y.float().cpu().numpy()

    def describe(self) -> dict:
        return {**self.base.describe(), 'mode': 'cudagraph', 'captured_shapes': [list(s) for s in self.graphs]}


class CompiledBackend:
    """A ``TorchBackend`` (mode graph) whose inference graph runs through ``torch.compile``."""

    name = 'torch'

    def __init__(self, base: Any, backend: str) -> None:
        if base.graph is None:
            raise Skip('torch.compile is applied to the graph mode')
        self.base = base
        self.device = base.device
        self.precision = base.precision
        self.descriptor_dim = base.descriptor_dim
        self.fn = torch.compile(base.graph, backend=backend, dynamic=False)
        self.compile_backend = backend

    def infer(self, batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            x = batch.to(self.base.device_obj, non_blocking=True).to(self.base.dtype)
            return self.fn(x.contiguous(memory_format=torch.channels_last)).float().cpu().numpy()

    def describe(self) -> dict:
        return {**self.base.describe(), 'mode': f'compile({self.compile_backend})'}


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def descriptors(backend: Any, batches: list[torch.Tensor]) -> np.ndarray:
    return _normalize(np.concatenate([backend.infer(b) for b in batches], axis=0))


def parity(desc: np.ndarray, ref: np.ndarray, n_db: int) -> dict:
    """Min cosine to the reference, and top-1 agreement: does each query retrieve the same database
    image as with the reference descriptors? Plus the reference's own recall@1 and margins."""
    cos = (desc * ref).sum(1)
    top = (desc[n_db:] @ desc[:n_db].T).argmax(1)
    ref_scores = ref[n_db:] @ ref[:n_db].T
    ref_top = ref_scores.argmax(1)
    return {'min_cosine': float(cos.min()), 'mean_cosine': float(cos.mean()),
            'top1_agreement': float((top == ref_top).mean()), 'queries': int(len(top)),
            'finite': bool(np.isfinite(desc).all())}


def _reference_quality(ref: np.ndarray, n_db: int) -> dict:
    scores = ref[n_db:] @ ref[:n_db].T
    order = np.sort(scores, axis=1)
    return {'recall_at_1_generated_places': float((scores.argmax(1) == np.arange(len(scores))).mean()),
            'median_top1_top2_margin': float(np.median(order[:, -1] - order[:, -2]))}


def time_infer(backend: Any, batch: torch.Tensor, rounds: int, warmup: int) -> dict:
    """Wall time of ``backend.infer(batch)`` (it returns host numpy, so it waits for the GPU)."""
    for _ in range(warmup):
        backend.infer(batch)
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        backend.infer(batch)
        samples.append(time.perf_counter() - t0)
    a = np.asarray(samples) * 1e3 / batch.shape[0]
    return {'p50_ms_per_image': float(np.percentile(a, 50)), 'p90_ms_per_image': float(np.percentile(a, 90)),
            'best_ms_per_image': float(a.min()), 'n': len(samples)}


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _weights_for(name: str, weights_dir: Path | None) -> Path | None:
    if weights_dir is None:
        return None
    path = weights_dir / f'{name}.pth'
    return path if path.is_file() else None


def run_inference(plan_name: str, config: Any, plan: Plan, images: tuple[list, list], budget: Budget,
                  args: argparse.Namespace, report: Report, compile_queue: list) -> dict:
    """Every precision x mode variant of one model: speed at each batch, parity with CPU FP32."""
    from boq_vpr.backends.torch_backend import TorchBackend
    from boq_vpr.models import load_model
    from boq_vpr.preprocessing import Preprocessor

    weights = _weights_for(plan_name, args.weights_dir)
    db, queries = images
    h, w = config.image_size
    pre = Preprocessor((h, w), 'fixed', config.stride if config.is_vit else 1)
    all_images = db + queries
    batches = [pre.batch(all_images[i:i + 8]) for i in range(0, len(all_images), 8)]
    t0 = time.monotonic()
    cpu_model = load_model(config, weights)
    build_s = time.monotonic() - t0
    t0 = time.monotonic()
    ref_backend = TorchBackend(config, device='cpu', precision='fp32', model=cpu_model, mode='eager')
    ref = descriptors(ref_backend, batches)
    ref_s = time.monotonic() - t0
    result: dict[str, Any] = {
        'config': config.name, 'image_size': [h, w], 'descriptor_dim': int(config.descriptor_dim),
        'weights': str(weights) if weights else 'random (seeded)', 'device': plan.device,
        'gpu': torch.cuda.get_device_name(0) if plan.device == 'cuda' else None,
        'reference': {'what': 'torch eager fp32 on the CPU', 'images': len(all_images), 'seconds': round(ref_s, 2),
                      'model_build_s': round(build_s, 2), **_reference_quality(ref, len(db))},
        'variants': []}
    del ref_backend
    gpu_model = copy.deepcopy(cpu_model)
    del cpu_model
    timing_batches = {b: pre.batch((all_images * 8)[:b]) for b in BATCHES}
    variants = []
    for precision in PRECISIONS:
        for mode in MODES:
            entry: dict[str, Any] = {'variant': f'torch {precision} {mode}', 'backend': 'torch',
                                     'precision': precision, 'mode': mode}
            try:
                if budget.left() < 20:
                    raise Skip(f'time budget: {budget.left():.0f} s left')
                base = TorchBackend(config, device=plan.device, precision=precision, model=gpu_model,
                                    mode='eager' if mode == 'eager' else 'graph')
                backend = CudaGraphBackend(base) if mode == 'cudagraph' else base
                variants.append((entry, backend))
                if mode == 'graph' and precision in args.compile_precisions and \
                        not (plan.dry_run and plan_name != 'resnet50_16384'):   # dry run: one model checks the path
                    compile_queue.append((plan_name, config, precision, base, batches, ref, len(db), timing_batches))
            except Skip as err:
                entry.update(status='skipped', reason=str(err))
            except Exception as err:
                entry.update(status='skipped', reason=f'{type(err).__name__}: {err}')
            result['variants'].append(entry)
    for name, kind in (('onnxruntime', 'cuda'), ('tensorrt', 'cuda')):
        for precision in ('fp32', 'fp16'):
            entry = {'variant': f'{name} {precision}', 'backend': name, 'precision': precision, 'mode': '-'}
            reason = report.data['skipped'].get('onnxruntime-gpu' if name == 'onnxruntime' else name)
            if reason:
                entry.update(status='skipped', reason=reason)
            else:
                try:
                    if budget.left() < 120:
                        raise Skip(f'time budget: {budget.left():.0f} s left (an engine or export takes minutes)')
                    from boq_vpr.backends import make_backend
                    options = {'engine_cache_dir': Path(args.work) / 'engines', 'max_batch': 8} if name == 'tensorrt' else {}
                    backend = make_backend(name, config, weights, device=kind, precision=precision, **options)
                    variants.append((entry, backend))
                except Exception as err:
                    entry.update(status='skipped' if isinstance(err, Skip) else 'failed', reason=f'{err}')
            result['variants'].append(entry)
    # parity and timing; eager fp32 first: it is the reference of the ratios
    for entry, backend in variants:
        try:
            entry['parity_vs_cpu_fp32'] = parity(descriptors(backend, batches), ref, len(db))
            entry['timing'] = {}
            for b, batch in timing_batches.items():
                t = {'cpu_input': time_infer(backend, batch, plan.rounds, plan.warmup)}
                if plan.device == 'cuda':
                    t['gpu_input'] = time_infer(backend, batch.to(plan.device), plan.rounds, plan.warmup)
                entry['timing'][str(b)] = t
            entry['describe'] = _jsonable(backend.describe())
            entry['status'] = 'ok'
        except Exception as err:
            entry.update(status='failed', reason=f'{type(err).__name__}: {err}')
            traceback.print_exc()
    _ratios_and_verdicts(result)
    del variants, gpu_model
    _free()
    return result


def _ratios_and_verdicts(result: dict) -> None:
    """x eager FP32 (same batch, same input kind) and correct/fastest-correct verdicts."""
    ref = next((v for v in result['variants'] if v['variant'] == 'torch fp32 eager' and v.get('status') == 'ok'), None)
    for v in result['variants']:
        if v.get('status') != 'ok':
            continue
        p = v['parity_vs_cpu_fp32']
        v['correct'] = bool(p['finite'] and p['min_cosine'] >= MIN_COSINE.get(v['precision'], 0.999)
                            and p['top1_agreement'] >= MIN_TOP1)
        if ref is None:
            continue
        for b, t in v['timing'].items():
            for kind, s in t.items():
                r = ref['timing'][b][kind]['p50_ms_per_image']
                s['x_eager_fp32'] = r / s['p50_ms_per_image'] if s['p50_ms_per_image'] > 0 else None
    ok = [v for v in result['variants'] if v.get('status') == 'ok' and v.get('correct')]
    for b in map(str, BATCHES):
        def speed(v: dict) -> float:
            return v['timing'][b]['cpu_input']['p50_ms_per_image']
        best = min(ok, key=speed, default=None)
        torch_best = min((v for v in ok if v['backend'] == 'torch' and v['mode'] in ('eager', 'graph')),
                         key=speed, default=None)
        result[f'fastest_correct_b{b}'] = best['variant'] if best else None
        result[f'fastest_correct_torch_backend_b{b}'] = torch_best['variant'] if torch_best else None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


# ---------------------------------------------------------------- compile (last, budget permitting)

def run_compile(queue: list, plan: Plan, budget: Budget, inference: dict) -> dict:
    if not queue:
        raise Skip('no precision selected for torch.compile (--compile-precisions)')
    out: dict[str, list] = {}
    for plan_name, config, precision, base, batches, ref, n_db, timing_batches in queue:
        entry: dict[str, Any] = {'variant': f'torch {precision} compile', 'compile_backend': plan.compile_backend}
        out.setdefault(plan_name, []).append(entry)
        need = 15 if plan.dry_run else 150
        if budget.left() < need:
            entry.update(status='skipped', reason=f'time budget: {budget.left():.0f} s left, compiling needs about {need} s')
            continue
        try:
            backend = CompiledBackend(base, plan.compile_backend)
            t0 = time.monotonic()
            desc = descriptors(backend, batches)
            entry['first_pass_s'] = round(time.monotonic() - t0, 2)
            entry['parity_vs_cpu_fp32'] = parity(desc, ref, n_db)
            entry['timing'] = {}
            ref_variant = next((v for v in inference.get(plan_name, {}).get('variants', [])
                                if v['variant'] == 'torch fp32 eager' and v.get('status') == 'ok'), None)
            for b, batch in timing_batches.items():
                t = time_infer(backend, batch, plan.rounds, plan.warmup + 1)
                if ref_variant is not None:
                    t['x_eager_fp32'] = ref_variant['timing'][str(b)]['cpu_input']['p50_ms_per_image'] / t['p50_ms_per_image']
                entry['timing'][str(b)] = {'cpu_input': t}
            p = entry['parity_vs_cpu_fp32']
            entry['correct'] = bool(p['finite'] and p['min_cosine'] >= MIN_COSINE[precision]
                                    and p['top1_agreement'] >= MIN_TOP1)
            entry['status'] = 'ok'
        except Exception as err:
            entry.update(status='failed', reason=f'{type(err).__name__}: {err}')
            traceback.print_exc()
    return out


# ---------------------------------------------------------------- training steps

def run_training_steps(plan: Plan, budget: Budget) -> dict:
    """Steps of the resnet50_16384 preset on a GPU-resident batch: images/s and peak memory."""
    from boq_vpr.models import build_model
    from training.backbone import freeze_backbone, set_frozen_eval
    from training.config import load_config
    from training.module import BoQTrainingModule

    cfg = load_config('resnet50_16384')
    mc = cfg.model_config() if not plan.dry_run else plan.models['resnet50_16384']
    h, w = plan.train_size if plan.dry_run else cfg.data.image_size
    k = cfg.data.images_per_place
    dev = torch.device(plan.device)
    amp = plan.device == 'cuda'
    attempts = []
    for p in plan.train_places_per_batch:
        if p > cfg.data.places_per_batch:
            continue
        model = module = opt = images = None
        try:
            model = build_model(mc, seed=1).to(dev)
            frozen = freeze_backbone(model, cfg.trainable_blocks)
            module = BoQTrainingModule(model, cfg.optim, cfg.loss, frozen=frozen)
            module.train()
            set_frozen_eval(frozen)
            o = cfg.optim
            groups = [{'params': [q for q in model.aggregator.parameters() if q.requires_grad], 'lr': o.lr}]
            backbone = [q for q in model.backbone.parameters() if q.requires_grad]
            if backbone:
                groups.insert(0, {'params': backbone, 'lr': o.lr * o.backbone_lr_mult})
            opt = torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
            scaler = torch.amp.GradScaler('cuda', enabled=amp)
            gen = torch.Generator(device=dev).manual_seed(0)
            images = torch.randn((p * k, 3, h, w), device=dev, generator=gen)
            labels = torch.arange(p, device=dev).repeat_interleave(k)
            losses = []

            def step() -> float:
                with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
                    desc = model(images)
                loss, _ = module.compute_loss(desc, labels)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                return float(loss.detach())

            if amp:
                torch.cuda.reset_peak_memory_stats(dev)
            for _ in range(min(2, plan.train_steps)):     # warm-up (cuDNN autotuning, allocator)
                losses.append(step())
            if amp:
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            for _ in range(plan.train_steps):
                losses.append(step())
            if amp:
                torch.cuda.synchronize(dev)
            seconds = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated(dev) / 2**30 if amp else None
            attempts.append({'places_per_batch': p, 'status': 'ok'})
            n_train = sum(q.numel() for q in model.parameters() if q.requires_grad)
            return {'preset': 'resnet50_16384', 'model': mc.name, 'image_size': [h, w],
                    'places_per_batch': p, 'images_per_place': k, 'batch_images': p * k,
                    'precision': '16-mixed (fp16 autocast + GradScaler)' if amp else '32-true (CPU)',
                    'optimizer': 'AdamW', 'trainable_parameters': int(n_train), 'trainable_blocks': cfg.trainable_blocks,
                    'timed_steps': plan.train_steps, 'seconds': round(seconds, 3),
                    'images_per_s': p * k * plan.train_steps / seconds, 'peak_gpu_memory_gib': peak,
                    'losses': losses, 'attempts': attempts,
                    'note': 'GPU steps on one GPU-resident random batch: data loading and augmentation excluded'
                            + ('; dry run: a tiny stand-in model and size' if plan.dry_run else '')}
        except torch.cuda.OutOfMemoryError as err:
            attempts.append({'places_per_batch': p, 'status': 'out of memory', 'error': str(err).split('\n')[0]})
        finally:
            model = module = opt = images = None   # free the attempt's memory before the next one
            _free()
    raise RuntimeError(f'no batch fitted: {attempts}')


# ---------------------------------------------------------------- node latency

def run_node_latency(plan: Plan, images: tuple[list, list], inference: dict, args: argparse.Namespace) -> dict:
    """Per-frame latency of the node's pipeline (Encoder batch 1 -> LoopClosureDetector) without DDS."""
    from boq_vpr.encoder import Encoder
    from boq_vpr.detection import DetectorConfig, LoopClosureDetector
    from boq_vpr.map import MapDatabase
    from boq_vpr.models import RANDOM_WEIGHTS

    res = inference.get('resnet50_16384')
    config = plan.models['resnet50_16384']
    pick = (res or {}).get('fastest_correct_b1') or 'torch fp32 graph'
    parts = pick.split()
    if parts[0] != 'torch':
        pick = (res or {}).get('fastest_correct_torch_backend_b1') or 'torch fp32 graph'
        parts = pick.split()
    precision, mode = parts[1], parts[2]
    weights = _weights_for('resnet50_16384', args.weights_dir)
    out: dict[str, Any] = {'model': config.name, 'image_size': list(config.image_size), 'variants': []}
    frames = [im for pair in zip(*images) for im in pair]
    modes = [mode] if mode == 'graph' else [mode, 'graph']   # also what backend: torch runs today
    for m in modes:
        enc = Encoder(config, weights=weights or RANDOM_WEIGHTS, backend='torch', device=plan.device,
                      precision=precision, mode='eager' if m == 'eager' else 'graph', batch_size=1)
        if m == 'cudagraph':
            enc.backend = CudaGraphBackend(enc.backend)
        db = MapDatabase(enc.descriptor_dim, enc.fingerprint)
        detector = LoopClosureDetector(db, DetectorConfig(mode='slam'))
        enc.encode(frames[0])      # warm-up (the node does this at start-up)
        rows = []
        for i in range(plan.node_frames):
            rgb = frames[i % len(frames)]
            t0 = time.perf_counter()
            desc = enc.encode(rgb)[0]
            t1 = time.perf_counter()
            result = detector.process(desc, stamp_ns=int(i * 1e8), image=rgb)
            t2 = time.perf_counter()
            rows.append((t1 - t0, t2 - t1, t2 - t0, result.outcome))
        a = np.asarray([r[:3] for r in rows]) * 1e3

        def pct(col: int) -> dict:
            return {'p50_ms': float(np.percentile(a[:, col], 50)), 'p99_ms': float(np.percentile(a[:, col], 99)),
                    'max_ms': float(a[:, col].max())}
        outcomes: dict[str, int] = {}
        for r in rows:
            outcomes[r[3]] = outcomes.get(r[3], 0) + 1
        out['variants'].append({'variant': f'torch {precision} {m}', 'frames': len(rows),
                                'frame_size': list(frames[0].shape[:2]), 'encode': pct(0), 'detect': pct(1),
                                'total': pct(2), 'keyframes': len(db), 'outcomes': outcomes,
                                'preprocess_ms_per_frame': enc.times.per_image_ms()['preprocess']})
        del enc, db, detector
        _free()
    out['chosen'] = pick
    out['note'] = ('the node\'s worker path minus message conversion and publishing: encode (preprocessing '
                   'and backend) then the detector in slam mode with the shipped defaults, 10 Hz stamps')
    return out


# ---------------------------------------------------------------- training run (the real training code)

def write_gsv_set(root: Path, places: int, size: int, seed: int = 0) -> None:
    """A GSV-Cities-layout set: ``places`` places of 4 views each."""
    import csv
    import cv2
    from training.gsv import COLUMNS, image_name
    rng = np.random.default_rng(seed)
    img_dir = root / 'Images' / 'Synthetic'
    img_dir.mkdir(parents=True, exist_ok=True)
    (root / 'Dataframes').mkdir(parents=True, exist_ok=True)
    with open(root / 'Dataframes' / 'Synthetic.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for pid in range(places):
            tex = _texture(rng, int(size * 1.25), int(size * 1.25))
            for k in range(4):
                lat, lon = 45.0 + pid * 1e-3, -73.0 - k * 1e-5
                row = [pid, 2010 + k, 1 + k, 90 * k, 'Synthetic', lat, lon, f'p{pid}-{k}']
                name = image_name('Synthetic', pid, 2010 + k, 1 + k, 90 * k, lat, lon, f'p{pid}-{k}')
                cv2.imwrite(str(img_dir / name), cv2.cvtColor(_view(tex, size, size, rng, 1.0), cv2.COLOR_RGB2BGR))
                writer.writerow(row)


def run_training_run(plan: Plan, work: Path) -> dict:
    from training.config import load_config
    from training.run import TrainingRun

    data = work / 'gsv'
    t0 = time.monotonic()
    write_gsv_set(data, plan.run_places, int(plan.run_size[0] * 1.25))
    gen_s = time.monotonic() - t0
    overrides: dict[str, Any] = {
        'data': {'train_root': str(data), 'places_per_batch': plan.run_places_per_batch,
                 'image_size': list(plan.run_size), 'num_workers': plan.run_workers, 'val_sets': []},
        'optim': {'warmup_steps': min(100, plan.run_steps_per_epoch), 'milestones': [plan.run_epochs + 1]},
        'trainer': {'max_epochs': plan.run_epochs, 'limit_train_batches': plan.run_steps_per_epoch,
                    'accelerator': 'gpu' if plan.device == 'cuda' else 'cpu', 'devices': 1,
                    'precision': '16-mixed' if plan.device == 'cuda' else '32-true',
                    'out_dir': str(work / 'run'), 'progress_bar': False, 'validate_before_training': False,
                    'log_every_n_steps': 1}}
    if plan.dry_run:
        overrides['model'] = 'resnet18_1024'
    config = load_config('cpu_small', overrides=overrides)
    run = TrainingRun(config)
    result = run.fit()
    losses = [h['train_loss'] for h in result.history]
    return {'preset': 'cpu_small', 'model': run.model_config.name, 'image_size': list(plan.run_size),
            'batch': [plan.run_places_per_batch, 4], 'precision': run.precision, 'epochs': plan.run_epochs,
            'steps': plan.run_epochs * plan.run_steps_per_epoch, 'workers': plan.run_workers,
            'places': plan.run_places, 'data_generation_s': round(gen_s, 2),
            'epoch_losses': losses, 'loss_first_epoch': losses[0] if losses else None,
            'loss_last_epoch': losses[-1] if losses else None,
            'loss_went_down': bool(losses and losses[-1] < losses[0]),
            'train_images_per_s': result.train_images_per_s, 'fit_images_per_s': result.fit_images_per_s,
            'peak_gpu_memory_gib': (result.peak_gpu_memory_mib / 1024) if result.peak_gpu_memory_mib else None,
            'note': 'Lightning fit with the real data loader (RandAugment, workers); generated places'}


# ---------------------------------------------------------------- environment and skips

def environment(plan: Plan, report: Report) -> dict:
    from boq_vpr.backends.capabilities import has_module
    env: dict[str, Any] = {'python': platform.python_version(), 'platform': platform.platform(),
                           'cpu_count': os.cpu_count(), 'torch': torch.__version__, 'torch_cuda': torch.version.cuda,
                           'cuda_available': torch.cuda.is_available(), 'cudnn': torch.backends.cudnn.version()}
    if plan.device == 'cuda':
        if not torch.cuda.is_available():
            raise RuntimeError(f'no CUDA device visible to torch {torch.__version__} (use --cpu-dry-run on a CPU)')
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, capability=f'sm_{props.major}{props.minor}',
                   gpu_memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count)
    packages = {}
    for name in ('numpy', 'faiss', 'cv2', 'onnx', 'onnxruntime', 'lightning', 'pytorch_metric_learning',
                 'torchvision', 'openvino', 'tensorrt'):
        packages[name] = has_module(name)
    env['packages'] = packages
    try:
        from importlib import metadata
        env['versions'] = {n: metadata.version(d) for n, d in (
            ('faiss', 'faiss-cpu'), ('lightning', 'lightning'), ('pytorch_metric_learning', 'pytorch-metric-learning'),
            ('onnxruntime', 'onnxruntime'), ('torchvision', 'torchvision')) if packages.get(n)}
    except Exception as err:  # versions are informative only
        env['versions'] = f'unknown: {err}'
    skipped = report.data['skipped']
    if plan.dry_run:
        skipped['cuda'] = 'CPU dry run (--cpu-dry-run): tiny models and sizes, no GPU figures'
    try:
        from boq_vpr.backends.tensorrt_backend import import_tensorrt
        trt = import_tensorrt()
        env['tensorrt'] = str(trt.__version__)
        if plan.device != 'cuda':
            skipped['tensorrt'] = 'TensorRT needs a CUDA GPU (dry run)'
    except Exception as err:
        skipped['tensorrt'] = (f'{err} -- TensorRT cannot be installed on an offline machine (the PyPI packages '
                               'fetch NVIDIA\'s libraries at install time); the static check '
                               '(scripts/check_tensorrt_types.py) and test/test_trt_ops.py stand in for it')
    try:
        import onnxruntime
        providers = onnxruntime.get_available_providers()
        env['onnxruntime_providers'] = providers
        if 'CUDAExecutionProvider' not in providers:
            skipped['onnxruntime-gpu'] = (f'onnxruntime {onnxruntime.__version__} is the CPU build (providers: '
                                          f'{", ".join(providers)}); onnxruntime-gpu is not installed')
        elif plan.device != 'cuda':
            skipped['onnxruntime-gpu'] = 'ONNX Runtime CUDA needs a CUDA GPU (dry run)'
    except ImportError as err:
        skipped['onnxruntime-gpu'] = f'onnxruntime not importable: {err}'
    for name, module in (('faiss', 'faiss'), ('pytorch-metric-learning', 'pytorch_metric_learning'),
                         ('lightning', 'lightning')):
        if not packages.get(module):
            skipped[name] = (f'{name} is not installed: steps that need it fail; carry its wheel '
                             '(scripts/gpu_check_offline.sh download)')
    return env


def run_gpu_tests(plan: Plan, out: Path, budget: Budget) -> dict:
    if plan.dry_run:
        raise Skip('dry run: test/test_gpu.py runs in the ordinary test suite, where its GPU tests skip')
    cmd = [sys.executable, '-m', 'pytest', '-q', '-rs', '-p', 'no:cacheprovider', 'test/test_gpu.py']
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(30.0, min(240.0, budget.left() - 10)))
    (out / PYTEST_NAME).write_text(proc.stdout + proc.stderr)
    last = [ln for ln in proc.stdout.splitlines() if ln.strip()][-1:] or ['']
    if proc.returncode not in (0, 5):
        raise RuntimeError(f'pytest test/test_gpu.py: exit status {proc.returncode}: {last[0]}')
    return {'command': ' '.join(cmd[2:]), 'exit_status': proc.returncode, 'summary': last[0]}


# ---------------------------------------------------------------- table

def _fmt(v: Any, spec: str) -> str:
    return '-' if v is None else format(v, spec)


def table(data: dict) -> str:
    """The short summary, printed last."""
    r = data['results']
    env = r.get('environment', {})
    head = (f'boq_vpr GPU check ({data["mode"]}), {data["started"]}: {env.get("gpu", "no GPU")} '
            f'{env.get("capability", "")}, torch {env.get("torch")} (CUDA {env.get("torch_cuda")}), '
            f'weights {data["settings"]["weights"]}')
    lines = [head, '']
    lines.append(f'{"model":15s} {"variant":24s} {"b1 ms":>8s} {"x eager":>7s} {"b8 ms/img":>9s} {"x eager":>7s} '
                 f'{"min cos":>8s} {"top1":>5s}  ok')
    for key in ('inference:resnet50_16384', 'inference:dinov2_12288', 'compile'):
        res = r.get(key)
        if not res:
            continue
        groups = res.items() if key == 'compile' else [(key.split(':', 1)[1], res['variants'])]
        for model, variants in groups:
            for v in variants:
                if v.get('status') != 'ok':
                    lines.append(f'{model:15s} {v["variant"]:24s} {v.get("status")}: {v.get("reason", "")[:70]}')
                    continue
                t1 = v['timing'].get('1', {}).get('cpu_input', {})
                t8 = v['timing'].get('8', {}).get('cpu_input', {})
                p = v['parity_vs_cpu_fp32']
                lines.append(f'{model:15s} {v["variant"]:24s} {_fmt(t1.get("p50_ms_per_image"), "8.2f")} '
                             f'{_fmt(t1.get("x_eager_fp32"), "7.2f")} {_fmt(t8.get("p50_ms_per_image"), "9.2f")} '
                             f'{_fmt(t8.get("x_eager_fp32"), "7.2f")} {p["min_cosine"]:8.5f} '
                             f'{p["top1_agreement"]:5.2f}  {"yes" if v.get("correct", True) else "NO"}')
        if key != 'compile':
            lines.append(f'{"":15s} fastest correct: b1 {res.get("fastest_correct_b1")}, b8 {res.get("fastest_correct_b8")}; '
                         f'of backend torch today: b1 {res.get("fastest_correct_torch_backend_b1")}')
    lines.append('(ms per image from a CPU batch, the Encoder\'s path; p50; x eager = eager fp32 on the same device '
                 'and batch / this; parity against CPU fp32 eager)')
    ts = r.get('training_steps')
    if ts:
        lines.append(f'training steps, preset {ts["preset"]} ({ts["model"]}, {ts["image_size"][0]}x{ts["image_size"][1]}, '
                     f'P x K = {ts["places_per_batch"]} x {ts["images_per_place"]}, {ts["precision"]}): '
                     f'{ts["images_per_s"]:.0f} images/s, peak GPU memory {_fmt(ts["peak_gpu_memory_gib"], ".1f")} GiB')
    node = r.get('node_latency')
    if node:
        for v in node['variants']:
            lines.append(f'node pipeline without DDS, {node["model"]} {v["variant"]}: encode p50 {v["encode"]["p50_ms"]:.2f} ms, '
                         f'detect p50 {v["detect"]["p50_ms"]:.2f} ms, total p50/p99 {v["total"]["p50_ms"]:.2f} / '
                         f'{v["total"]["p99_ms"]:.2f} ms ({v["frames"]} frames)')
    tr = r.get('training_run')
    if tr:
        lines.append(f'training run {tr["preset"]} ({tr["model"]}, {tr["image_size"][0]}x{tr["image_size"][1]}, '
                     f'{tr["batch"][0]} x {tr["batch"][1]}, {tr["precision"]}, {tr["steps"]} steps): loss '
                     f'{_fmt(tr["loss_first_epoch"], ".4f")} -> {_fmt(tr["loss_last_epoch"], ".4f")} '
                     f'({"down" if tr["loss_went_down"] else "NOT down"}), {_fmt(tr["train_images_per_s"], ".0f")} images/s')
    for s in data['steps']:
        if s['status'] != 'ok':
            lines.append(f'step {s["name"]}: {s["status"]}: {s.get("reason", "")[:150]}')
    for name, reason in data['skipped'].items():
        lines.append(f'skipped {name}: {reason[:150]}')
    return '\n'.join(lines) + '\n'


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', type=Path, default=Path(os.environ.get('OUT') or ROOT / 'gpu_check_out'),
                        help='results folder (default: $OUT, else ./gpu_check_out)')
    parser.add_argument('--cpu-dry-run', action='store_true',
                        help='run every step on the CPU with tiny models and sizes (checks the script, not the GPU)')
    parser.add_argument('--budget-s', type=float, default=420.0,
                        help='time budget in seconds (default 420); optional parts are skipped when it runs short')
    parser.add_argument('--images', type=Path, default=None, help='a folder of images instead of generated ones')
    parser.add_argument('--weights-dir', type=Path, default=None,
                        help='folder with resnet50_16384.pth / dinov2_12288.pth (default: random weights)')
    parser.add_argument('--compile-precisions', nargs='*', default=None, choices=PRECISIONS,
                        help='precisions of the torch.compile variants (default: fp16 on a GPU, fp32 in the dry '
                             'run, where the "eager" compile backend only checks the tracing; none: no compile)')
    parser.add_argument('--skip', nargs='*', default=[], choices=STEP_NAMES, help='steps not to run')
    parser.add_argument('--work', type=Path, default=None, help='scratch folder (default: a temporary one)')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    logging.getLogger('boq_vpr.models.checkpoint').setLevel(logging.ERROR)   # the random-weights warning, once per model
    for name in ('lightning', 'lightning.pytorch', 'lightning.fabric'):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.cpu_dry_run:
        os.environ['CUDA_VISIBLE_DEVICES'] = ''
        # one thread: on a shared CPU, a parallel region waits for every thread's core (seen: 10 ms -> 800 ms)
        torch.set_num_threads(1)
    plan = make_plan(args.cpu_dry_run)
    if args.compile_precisions is None:
        args.compile_precisions = ['fp32'] if plan.dry_run else ['fp16']
    args.out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget_s)
    report = Report(plan, args)
    report.data['plan'] = {'device': plan.device, 'models': {k: {'config': c.name, 'image_size': list(c.image_size)}
                                                               for k, c in plan.models.items()}}
    with tempfile.TemporaryDirectory(prefix='boq_gpu_check_') as tmp:
        args.work = args.work or Path(tmp)
        os.environ.setdefault('BOQ_VPR_CACHE', str(Path(args.work) / 'cache'))

        def skippable(name: str, fn: Callable[[], Any]) -> Callable[[], Any]:
            def run() -> Any:
                if name in args.skip:
                    raise Skip('--skip')
                return fn()
            return run

        report.step('environment', lambda: environment(plan, report), budget)
        images = report.step('images', skippable('images', lambda: folder_places(args.images, plan.places) if args.images
                                                 else generated_places(plan.places, plan.frame_size)), budget, store=False)
        if images is not None:
            report.data['results']['images'] = {
                'database': len(images[0]), 'queries': len(images[1]), 'frame_size': list(images[0][0].shape[:2]),
                'source': str(args.images) if args.images else 'generated: a random texture per place; the query '
                          'is a shifted, re-lit, noisy view of its database image'}
        compile_queue: list = []
        inference: dict[str, dict] = {}
        for name, config in plan.models.items():
            step = f'inference:{name}'

            def infer(name: str = name, config: Any = config) -> dict:
                if images is None:
                    raise Skip('no images')
                return run_inference(name, config, plan, images, budget, args, report, compile_queue)
            res = report.step(step, skippable(step, infer), budget, need_s=30)
            if res:
                inference[name] = res
        report.step('training_steps', skippable('training_steps', lambda: run_training_steps(plan, budget)), budget,
                    need_s=40)

        def node() -> dict:
            if images is None:
                raise Skip('no images')
            return run_node_latency(plan, images, inference, args)
        report.step('node_latency', skippable('node_latency', node), budget, need_s=20)
        report.step('training_run', skippable('training_run', lambda: run_training_run(plan, Path(args.work))), budget,
                    need_s=90 if not plan.dry_run else 0)
        report.step('gpu_tests', skippable('gpu_tests', lambda: run_gpu_tests(plan, args.out, budget)), budget, need_s=60)
        report.step('compile', skippable('compile', lambda: run_compile(compile_queue, plan, budget, inference)), budget)
        compile_queue.clear()
        _free()
    report.data['seconds'] = round(time.monotonic() - budget.start, 1)
    report.data['finished'] = dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')
    report.save()
    report.data = _jsonable(report.data)
    text = table(report.data)
    print(f'\nsaved {args.out / JSON_NAME} ({report.data["seconds"]} s)\n')
    print(text, end='')
    return 1 if report.failed else 0


if __name__ == '__main__':
    sys.exit(main())
