"""PyTorch backend: the eager model, on CPU or CUDA."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import BackendError
from ..models import load_model
from ..models.config import ModelConfig

log = logging.getLogger(__name__)

_DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda if present else cpu; an explicit 'cuda' without CUDA is an error."""
    if device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    dev = torch.device(device)
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise BackendError(f'device {device!r} requested but CUDA is not available (torch {torch.__version__})')
    return dev


class TorchBackend:
    """Eager PyTorch inference with the queries' self-attention precomputed."""

    name = 'torch'

    def __init__(self, config: ModelConfig, weights: str | Path | None = None, device: str = 'auto',
                 precision: str = 'fp32', model: torch.nn.Module | None = None, **_ignored) -> None:
        if precision not in _DTYPES:
            raise BackendError(f'torch backend precision {precision!r} not supported; valid: {sorted(_DTYPES)}')
        self.device_obj = resolve_device(device)
        self.device = str(self.device_obj)
        self.precision = precision
        self.config = config
        if model is None:
            model = load_model(config, weights)
        self.model = model.eval().to(self.device_obj)
        self.model.aggregator.cache_queries()
        self.descriptor_dim = self.model.descriptor_dim

    def infer(self, batch: torch.Tensor) -> np.ndarray:
        batch = batch.to(self.device_obj, non_blocking=True)
        with torch.inference_mode():
            if self.precision == 'fp32':
                out = self.model(batch)
            else:
                with torch.autocast(self.device_obj.type, dtype=_DTYPES[self.precision]):
                    out = self.model(batch)
        return out.float().cpu().numpy()

    def attention(self, batch: torch.Tensor) -> tuple[np.ndarray, list[np.ndarray]]:
        """Descriptors and the cross-attention maps ``[N, Q, h*w]`` of each block."""
        with torch.inference_mode():
            desc, attns = self.model(batch.to(self.device_obj), return_attention=True)
        return desc.float().cpu().numpy(), [a.float().cpu().numpy() for a in attns]

    def describe(self) -> dict:
        return {'backend': self.name, 'device': self.device, 'precision': self.precision,
                'torch': torch.__version__, 'threads': torch.get_num_threads()}
