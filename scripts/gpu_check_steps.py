"""The GPU check's steps beyond inference: training steps, the node's pipeline, a training run.

``run_training_steps`` times training steps of the ``resnet50_16384`` preset on a GPU-resident batch,
``run_node_latency`` the node's per-frame pipeline without DDS, ``run_training_run`` the real
training code (Lightning) on generated places.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gpu_check_inference import CudaGraphBackend, random_texture, texture_view
from gpu_check_plan import Budget, Plan, free_memory, weights_for


# ---------------------------------------------------------------- training steps

def run_training_steps(plan: Plan, budget: Budget) -> dict:
    """Time steps of the resnet50_16384 preset on a GPU-resident batch: images/s and peak memory."""
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
                    'optimizer': 'AdamW', 'trainable_parameters': int(n_train),
                    'trainable_blocks': cfg.trainable_blocks,
                    'timed_steps': plan.train_steps, 'seconds': round(seconds, 3),
                    'images_per_s': p * k * plan.train_steps / seconds, 'peak_gpu_memory_gib': peak,
                    'losses': losses, 'attempts': attempts,
                    'note': 'GPU steps on one GPU-resident random batch: data loading and augmentation excluded'
                            + ('; dry run: a tiny stand-in model and size' if plan.dry_run else '')}
        except torch.cuda.OutOfMemoryError as err:
            attempts.append({'places_per_batch': p, 'status': 'out of memory', 'error': str(err).split('\n')[0]})
        finally:
            model = module = opt = images = None   # free the attempt's memory before the next one
            free_memory()
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
    weights = weights_for('resnet50_16384', args.weights_dir)
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
        free_memory()
    out['chosen'] = pick
    out['note'] = ('the node\'s worker path minus message conversion and publishing: encode (preprocessing '
                   'and backend) then the detector in slam mode with the shipped defaults, 10 Hz stamps')
    return out


# ---------------------------------------------------------------- training run (the real training code)

def write_gsv_set(root: Path, places: int, size: int, seed: int = 0) -> None:
    """Write a GSV-Cities-layout set: ``places`` places of 4 views each."""
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
            tex = random_texture(rng, int(size * 1.25), int(size * 1.25))
            for k in range(4):
                lat, lon = 45.0 + pid * 1e-3, -73.0 - k * 1e-5
                row = [pid, 2010 + k, 1 + k, 90 * k, 'Synthetic', lat, lon, f'p{pid}-{k}']
                name = image_name('Synthetic', pid, 2010 + k, 1 + k, 90 * k, lat, lon, f'p{pid}-{k}')
                view = texture_view(tex, size, size, rng, 1.0)
                cv2.imwrite(str(img_dir / name), cv2.cvtColor(view, cv2.COLOR_RGB2BGR))
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
