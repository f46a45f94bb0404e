"""The GPU check's plan (the sizes of a GPU run or of the CPU dry run), its time budget and limits.

Shared by the check's steps (``gpu_check_inference``, ``gpu_check_steps``) and its entry point
``gpu_check.py``.
"""
from __future__ import annotations

import gc
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

PRECISIONS = ('fp32', 'fp16', 'bf16')
MODES = ('eager', 'graph', 'cudagraph')
BATCHES = (1, 8)
# what a variant must reach to count as correct (same limits as ``boq-vpr verify``'s defaults)
MIN_COSINE = {'fp32': 0.9999, 'fp16': 0.999, 'bf16': 0.995, 'int8': 0.99}
MIN_TOP1 = 0.95


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


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def weights_for(name: str, weights_dir: Path | None) -> Path | None:
    if weights_dir is None:
        return None
    path = weights_dir / f'{name}.pth'
    return path if path.is_file() else None


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
