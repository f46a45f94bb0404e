"""The GPU check's inference steps: test images, every precision x mode variant, parity and timing.

Each variant runs against eager FP32 on the CPU on the same images (parity) and against eager FP32 on
the same device (speed); ``run_compile`` adds the ``torch.compile`` variants last, while the time
budget lasts.
"""
from __future__ import annotations

import argparse
import copy
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gpu_check_plan import (BATCHES, MIN_COSINE, MIN_TOP1, MODES, PRECISIONS, Budget, Plan, Skip, free_memory,
                            jsonable, weights_for)


# ---------------------------------------------------------------- images

def random_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    import cv2
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    tex = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(6):   # a few edges and blobs so views have structure at several scales
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            corner = (x0 + int(rng.integers(8, w // 3)), y0 + int(rng.integers(8, h // 3)))
            cv2.rectangle(tex, (x0, y0), corner, color, -1)
        else:
            cv2.circle(tex, (x0, y0), int(rng.integers(4, max(5, h // 6))), color, -1)
    return tex


def texture_view(tex: np.ndarray, h: int, w: int, rng: np.random.Generator, shift: float) -> np.ndarray:
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
        tex = random_texture(rng, int(h * 1.25), int(w * 1.25))
        db.append(texture_view(tex, h, w, rng, 0.3))
        queries.append(texture_view(tex, h, w, rng, 1.0))
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
    """A ``TorchBackend`` (mode graph) whose inference graph is captured in one CUDA graph per input shape.

    The graph is replayed: the same kernels without the per-kernel launch cost. Same ``infer`` contract.
    """

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
    """Compare descriptors with the reference: min cosine, and top-1 agreement.

    Top-1 agreement: does each query retrieve the same database image as with the reference
    descriptors? Plus the reference's own recall@1 and margins.
    """
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


def run_inference(plan_name: str, config: Any, plan: Plan, images: tuple[list, list], budget: Budget,
                  args: argparse.Namespace, skipped: dict[str, str], compile_queue: list) -> dict:
    """Every precision x mode variant of one model: speed at each batch, parity with CPU FP32."""
    from boq_vpr.backends.torch_backend import TorchBackend
    from boq_vpr.models import load_model
    from boq_vpr.preprocessing import Preprocessor

    weights = weights_for(plan_name, args.weights_dir)
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
            reason = skipped.get('onnxruntime-gpu' if name == 'onnxruntime' else name)
            if reason:
                entry.update(status='skipped', reason=reason)
            else:
                try:
                    if budget.left() < 120:
                        raise Skip(f'time budget: {budget.left():.0f} s left (an engine or export takes minutes)')
                    from boq_vpr.backends import make_backend
                    options = ({'engine_cache_dir': Path(args.work) / 'engines', 'max_batch': 8}
                               if name == 'tensorrt' else {})
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
            entry['describe'] = jsonable(backend.describe())
            entry['status'] = 'ok'
        except Exception as err:
            entry.update(status='failed', reason=f'{type(err).__name__}: {err}')
            traceback.print_exc()
    _ratios_and_verdicts(result)
    del variants, gpu_model
    free_memory()
    return result


def _ratios_and_verdicts(result: dict) -> None:
    """X eager FP32 (same batch, same input kind) and correct/fastest-correct verdicts."""
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
            entry.update(status='skipped',
                         reason=f'time budget: {budget.left():.0f} s left, compiling needs about {need} s')
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
                    eager_ms = ref_variant['timing'][str(b)]['cpu_input']['p50_ms_per_image']
                    t['x_eager_fp32'] = eager_ms / t['p50_ms_per_image']
                entry['timing'][str(b)] = {'cpu_input': t}
            p = entry['parity_vs_cpu_fp32']
            entry['correct'] = bool(p['finite'] and p['min_cosine'] >= MIN_COSINE[precision]
                                    and p['top1_agreement'] >= MIN_TOP1)
            entry['status'] = 'ok'
        except Exception as err:
            entry.update(status='failed', reason=f'{type(err).__name__}: {err}')
            traceback.print_exc()
    return out
