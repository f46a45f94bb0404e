"""Encoder backends: normalized image tensors -> descriptors.

Every backend implements ``EncoderBackend``. ``BACKENDS`` maps a name to a constructor
``(config, weights, **options) -> EncoderBackend``; ``auto`` tries ``AUTO_ORDER`` and logs its choice.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch

from ..errors import BackendError, ConfigError
from ..models.config import ModelConfig

log = logging.getLogger(__name__)


@runtime_checkable
class EncoderBackend(Protocol):
    """What the Encoder needs from a backend."""

    name: str              # e.g. 'torch', 'onnxruntime', 'tensorrt'
    descriptor_dim: int
    device: str            # 'cpu' or 'cuda[:N]'
    precision: str         # 'fp32', 'fp16', 'bf16', 'int8'

    def infer(self, batch: torch.Tensor) -> np.ndarray:
        """``[N, 3, H, W]`` float32 normalized input -> ``[N, D]`` float32 descriptors."""

    def describe(self) -> dict:
        """What runs (backend, device, precision, input/output names and shapes) for logs and info."""


BackendFactory = Callable[..., EncoderBackend]


def _torch_backend(config: ModelConfig, weights: str | Path | None, **options) -> EncoderBackend:
    from .torch_backend import TorchBackend
    return TorchBackend(config, weights, **options)


BACKENDS: dict[str, BackendFactory] = {
    'torch': _torch_backend,
}
# Fastest first; 'auto' takes the first that constructs. Later backends register themselves here.
AUTO_ORDER: list[str] = ['torch']


def backend_names() -> list[str]:
    return ['auto', *sorted(BACKENDS)]


def make_backend(name: str, config: ModelConfig, weights: str | Path | None = None, **options) -> EncoderBackend:
    """Build the named backend; ``auto`` picks the fastest available and says which and why."""
    if name == 'auto':
        reasons = []
        for candidate in AUTO_ORDER:
            try:
                backend = BACKENDS[candidate](config, weights, **options)
            except BackendError as err:
                reasons.append(f'{candidate}: {err}')
                continue
            log.info('backend auto -> %s (%s)%s', candidate, backend.describe(),
                     ('; skipped ' + '; '.join(reasons)) if reasons else '')
            return backend
        raise BackendError('no encoder backend available: ' + '; '.join(reasons))
    if name not in BACKENDS:
        raise ConfigError(f'unknown backend {name!r}; valid: {", ".join(backend_names())}')
    return BACKENDS[name](config, weights, **options)
