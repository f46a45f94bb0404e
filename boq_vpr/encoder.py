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

from .backends import FIXED_SIZE_BACKENDS, EncoderBackend, make_backend
from .errors import BackendError, ConfigError, ImageError
from .models.checkpoint import resolve_weights
from .models.config import ModelConfig, get_config
from .models.vpr import RANDOM_SEED, feature_shape
from .preprocessing import Preprocessor
from .values import file_sha256

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
        if resize_mode == 'keep_aspect':
            # The input width follows the camera's aspect ratio: exported graphs need a dynamic size.
            if backend in FIXED_SIZE_BACKENDS:
                raise ConfigError(f'resize_mode keep_aspect needs inputs of any width, but the {backend} backend '
                                  f'builds its engine for one input size ({config.image_size[0]}x'
                                  f'{config.image_size[1]}); use resize_mode fixed with {backend}, or backend '
                                  'onnxruntime/openvino/torch with keep_aspect')
            backend_options.setdefault('dynamic_size', True)
        self.backend: EncoderBackend = make_backend(backend, config, self.weights, device=device,
                                                    **backend_options)
        spec = getattr(self.backend, 'spec', None)
        if resize_mode == 'keep_aspect' and spec is not None and spec.image_size is not None:
            source = getattr(self.backend, 'onnx_path', 'the ONNX file')
            raise ConfigError(f'resize_mode keep_aspect: {source} is fixed '
                              f'to input {spec.image_size[0]}x{spec.image_size[1]}; export it with --dynamic-size '
                              'or leave onnx_path unset')
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

    @property
    def supports_attention(self) -> bool:
        """Tell whether ``encode_with_attention`` works on this backend.

        Torch always; onnxruntime and openvino when created with ``attention=True``; tensorrt never.
        """
        return bool(getattr(self.backend, 'supports_attention', False))

    def encode_with_attention(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """Encode one image with its attention: descriptor, cross-attention maps and grid in one pass.

        One image ``H x W x 3`` -> (descriptor ``[D]``, cross-attention ``[blocks, Q, h*w]``, grid
        ``(h, w)``), both from one pass of this encoder's backend at its precision: the descriptor
        equals what ``encode`` returns for the image. BackendError where the backend has no
        attention output (see ``supports_attention``).
        """
        if not self.supports_attention:
            raise BackendError(f'{self.backend.name} backend gives no attention maps: use backend torch, or '
                               'onnxruntime/openvino created with attention=True (tensorrt: not supported)')
        t0 = time.perf_counter()
        batch = self.preprocessor.batch([image])
        t1 = time.perf_counter()
        desc, attn = self.backend.infer_with_attention(batch)
        t2 = time.perf_counter()
        self.times.preprocess += t1 - t0
        self.times.infer += t2 - t1
        self.times.images += 1
        grid = feature_shape(self.config, int(batch.shape[-2]), int(batch.shape[-1]))
        attn = np.asarray(attn, np.float32)
        if desc.shape != (1, self.descriptor_dim) or attn.ndim != 4 or attn.shape[-1] != grid[0] * grid[1]:
            raise ImageError(f'backend returned descriptor {desc.shape} and attention {attn.shape}, expected '
                             f'(1, {self.descriptor_dim}) and [1, blocks, queries, {grid[0] * grid[1]}]')
        return l2_normalize(desc)[0], attn[0], grid

    def warmup(self, height: int | None = None, width: int | None = None, attention: bool = False) -> None:
        """Run one black frame of ``height x width`` (default: the configured input size) through the backend.

        Then the first real frame pays no lazy initialization; give the camera's
        frame size with resize_mode keep_aspect, so that the warm-up runs the input size the frames
        will have. ``attention`` also warms up ``encode_with_attention``.
        """
        h0, w0 = self.config.image_size
        frame = np.zeros((int(height or h0), int(width or w0), 3), np.uint8)
        self.encode(frame)
        if attention and self.supports_attention:
            self.encode_with_attention(frame)

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
