"""The encoder: RGB images -> float32, L2-normalized descriptors ``[N, D]``.

Preprocessing plus one backend (torch, onnxruntime, tensorrt); the node, the CLI, the replay
tool and the evaluator all encode through this class.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .backends import EncoderBackend, make_backend
from .errors import ImageError
from .models.checkpoint import file_sha256, resolve_weights
from .models.config import ModelConfig, get_config
from .models.vpr import RANDOM_SEED
from .preprocessing import Preprocessor

log = logging.getLogger(__name__)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalization in float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


@dataclass
class StageTimes:
    """Accumulated wall time per stage (seconds) and image count, for diagnostics."""

    preprocess: float = 0.0
    infer: float = 0.0
    images: int = 0
    extra: dict = field(default_factory=dict)

    def per_image_ms(self) -> dict[str, float]:
        n = max(self.images, 1)
        return {'preprocess': 1e3 * self.preprocess / n, 'infer': 1e3 * self.infer / n}


class Encoder:
    """Images (RGB uint8 ``H x W x 3``) -> descriptors ``[N, D]`` float32 with unit L2 norm."""

    def __init__(self, model: str | ModelConfig = 'resnet50_16384', weights: str | Path | None = None,
                 backend: str = 'auto', device: str = 'auto', batch_size: int = 8,
                 image_size: tuple[int, int] | None = None, resize_mode: str = 'fixed',
                 **backend_options) -> None:
        config = get_config(model) if isinstance(model, str) else model
        if image_size is not None:
            config = config.with_image_size(*image_size)
        config.validate()
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        self.config = config
        self.weights = resolve_weights(config.name, weights)   # the shipped file when None
        self.batch_size = batch_size
        self.preprocessor = Preprocessor(config.image_size, resize_mode, config.stride if config.is_vit else 1)
        self.backend: EncoderBackend = make_backend(backend, config, self.weights, device=device,
                                                    **backend_options)
        self.times = StageTimes()
        self._fingerprint: str | None = None
        log.info('encoder %s (%d-D) on %s', config.name, self.descriptor_dim, self.backend.describe())

    @property
    def descriptor_dim(self) -> int:
        return self.backend.descriptor_dim

    @property
    def name(self) -> str:
        return f'{self.config.name}/{self.backend.name}'

    @property
    def fingerprint(self) -> str:
        """Identifies what the descriptors mean: configuration + weights hash (not the backend)."""
        if self._fingerprint is None:
            weights = file_sha256(self.weights) if self.weights is not None else f'random-seed{RANDOM_SEED}'
            blob = json.dumps({'config': self.config.to_dict(), 'weights': weights}, sort_keys=True)
            self._fingerprint = f'{self.config.name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}'
        return self._fingerprint

    def encode(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """One image ``H x W x 3`` or a sequence of them -> ``[N, D]``."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        elif isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        if len(images) == 0:
            return np.zeros((0, self.descriptor_dim), np.float32)
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            t0 = time.perf_counter()
            batch = self.preprocessor.batch(chunk)
            t1 = time.perf_counter()
            desc = self.backend.infer(batch)
            t2 = time.perf_counter()
            self.times.preprocess += t1 - t0
            self.times.infer += t2 - t1
            self.times.images += len(chunk)
            out.append(desc)
        desc = np.concatenate(out, axis=0)
        if desc.shape != (len(images), self.descriptor_dim):
            raise ImageError(f'backend returned {desc.shape}, expected ({len(images)}, {self.descriptor_dim})')
        return l2_normalize(desc)

    def encode_iter(self, images: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
        """Stream images through in batches; yields ``[n, D]`` blocks."""
        chunk: list[np.ndarray] = []
        for im in images:
            chunk.append(im)
            if len(chunk) == self.batch_size:
                yield self.encode(chunk)
                chunk = []
        if chunk:
            yield self.encode(chunk)

    def describe(self) -> dict:
        return {'model': self.config.name, 'descriptor_dim': self.descriptor_dim,
                'image_size': list(self.config.image_size), 'resize_mode': self.preprocessor.mode,
                'weights': str(self.weights) if self.weights else None, **self.backend.describe()}
