"""PyTorch backend: the model on CPU or CUDA, eager or as the plain-op inference graph.

``mode='graph'`` (default) runs ``boq_vpr.export.InferenceGraph`` (BatchNorm folded, constant query
path precomputed, plain attention) with channels-last memory and, at reduced precision, weights
converted to bf16/fp16. ``mode='eager'`` runs the model module as written (the reference that
benchmarks compare against), with the queries' self-attention cached and autocast for bf16/fp16.
``precision='auto'``: fp16 on CUDA, bf16 on CPUs that compute it natively, fp32 elsewhere.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import BackendError
from ..models import load_model
from ..models.config import ModelConfig
from .capabilities import cpu_supports_bf16
from .common import check_input

log = logging.getLogger(__name__)

_DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
MODES = ('graph', 'eager')


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda if present else cpu; an explicit 'cuda' without CUDA is an error."""
    if device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise BackendError(f'unknown device {device!r}; valid: auto, cpu, cuda, cuda:N') from err
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise BackendError(f'device {device!r} requested but CUDA is not available (torch {torch.__version__})')
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> fp16 on CUDA, bf16 on CPUs with native bf16, else fp32."""
    if precision == 'auto':
        if device.type == 'cuda':
            return 'fp16'
        return 'bf16' if cpu_supports_bf16() else 'fp32'
    if precision not in _DTYPES:
        raise BackendError(f'torch backend precision {precision!r} not supported; valid: auto, {", ".join(_DTYPES)}')
    if precision == 'fp16' and device.type == 'cpu':
        raise BackendError('torch fp16 on CPU is slower than fp32 on most CPUs; use bf16 or fp32 on CPU')
    return precision


class TorchBackend:
    """PyTorch inference (eager reference or plain-op graph)."""

    name = 'torch'
    supports_attention = True

    def __init__(self, config: ModelConfig, weights: str | Path | None = None, device: str = 'auto',
                 precision: str = 'fp32', model: torch.nn.Module | None = None, mode: str = 'graph',
                 **_ignored) -> None:
        if mode not in MODES:
            raise BackendError(f'torch backend mode {mode!r} unknown; valid: {", ".join(MODES)}')
        self.device_obj = resolve_device(device)
        self.device = str(self.device_obj)
        self.precision = resolve_precision(precision, self.device_obj)
        self.mode = mode
        self.config = config
        if model is None:
            model = load_model(config, weights)
        self.model = model.eval().to(self.device_obj)
        self.model.aggregator.cache_queries()
        self.descriptor_dim = self.model.descriptor_dim
        self.dtype = _DTYPES[self.precision]
        self.graph = None
        if mode == 'graph':
            from ..export.graph import InferenceGraph
            graph = InferenceGraph(self.model, None).to(self.device_obj)
            self.graph = graph.to(dtype=self.dtype, memory_format=torch.channels_last)
        log.info('torch %s backend on %s, %s', mode, self.device, self.precision)

    def infer(self, batch: torch.Tensor) -> np.ndarray:
        return self._run(batch, attention=False)[0]

    def infer_with_attention(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Compute descriptors ``[N, D]`` and cross-attention maps ``[N, blocks, Q, h*w]`` in one pass.

        The maps are averaged over heads; the pass runs the same graph, precision and memory layout
        as ``infer``.
        """
        desc, attn = self._run(batch, attention=True)
        return desc, attn

    def _run(self, batch: torch.Tensor, attention: bool) -> tuple[np.ndarray, np.ndarray | None]:
        check_input(batch, None, self.name)
        batch = batch.to(self.device_obj, non_blocking=True)
        attn = None
        with torch.inference_mode():
            if self.graph is not None:
                x = batch.to(dtype=self.dtype).contiguous(memory_format=torch.channels_last)
                out = self.graph(x, return_attention=attention)
                if attention:
                    out, attn = out
            else:
                with torch.autocast(self.device_obj.type, dtype=self.dtype, enabled=self.precision != 'fp32'):
                    out = self.model(batch, return_attention=attention)
                if attention:
                    out, attns = out
                    attn = torch.stack([a.float() for a in attns], dim=1)
        return out.float().cpu().numpy(), (attn.float().cpu().numpy() if attn is not None else None)

    def attention(self, batch: torch.Tensor) -> tuple[np.ndarray, list[np.ndarray]]:
        """Descriptors and the cross-attention maps ``[N, Q, h*w]`` of each block (same path as ``infer``)."""
        desc, attn = self.infer_with_attention(batch)
        return desc, [attn[:, i] for i in range(attn.shape[1])]

    def describe(self) -> dict:
        return {'backend': self.name, 'mode': self.mode, 'device': self.device, 'precision': self.precision,
                'torch': torch.__version__, 'threads': torch.get_num_threads()}
