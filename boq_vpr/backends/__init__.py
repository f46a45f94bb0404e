"""Encoder backends: normalized image tensors -> descriptors.

Every backend implements ``EncoderBackend``. ``BACKENDS`` maps a name to a constructor
``(config, weights, **options) -> EncoderBackend``; ``auto`` tries ``AUTO_ORDER`` and logs its choice.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, runtime_checkable

import numpy as np

from ..errors import BackendError, ConfigError
from ..models.config import ModelConfig

if TYPE_CHECKING:      # torch is imported where a backend is built, not to list the backends' names
    import torch

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
        """Describe what runs (backend, device, precision, input/output names and shapes) for logs and info."""


BackendFactory = Callable[..., EncoderBackend]


def _torch_backend(config: ModelConfig, weights: str | Path | None, **options) -> EncoderBackend:
    from .torch_backend import TorchBackend
    return TorchBackend(config, weights, **options)


def _onnxruntime_backend(config: ModelConfig, weights: str | Path | None, **options) -> EncoderBackend:
    from .onnxruntime_backend import OnnxRuntimeBackend
    return OnnxRuntimeBackend(config, weights, **options)


def _openvino_backend(config: ModelConfig, weights: str | Path | None, **options) -> EncoderBackend:
    from .openvino_backend import OpenVinoBackend
    return OpenVinoBackend(config, weights, **options)


def _tensorrt_backend(config: ModelConfig, weights: str | Path | None, **options) -> EncoderBackend:
    from .tensorrt_backend import TensorRTBackend
    return TensorRTBackend(config, weights, **options)


BACKENDS: dict[str, BackendFactory] = {
    'torch': _torch_backend,
    'onnxruntime': _onnxruntime_backend,
    'openvino': _openvino_backend,
    'tensorrt': _tensorrt_backend,
}
# What 'auto' tries, fastest first, as 'backend:device': GPU backends, then CPU backends. On CPUs
# with native bf16 and precision auto/bf16, AUTO_ORDER_CPU_BF16 replaces the CPU part (measured on
# a 2-core AVX512_BF16 CPU, resnet50_16384 at 384x384: openvino bf16 fastest, then torch bf16,
# both ahead of FP32 ONNX Runtime; at FP32, ONNX Runtime ahead of OpenVINO and PyTorch; see README).
AUTO_ORDER: list[str] = ['tensorrt:cuda', 'onnxruntime:cuda', 'torch:cuda',
                         'onnxruntime:cpu', 'openvino:cpu', 'torch:cpu']
AUTO_ORDER_CPU_BF16: list[str] = ['openvino:cpu', 'torch:cpu', 'onnxruntime:cpu']


def backend_names() -> list[str]:
    return ['auto', *sorted(BACKENDS)]


# Backends whose input size is fixed when built (no dynamic height/width): skipped by ``auto`` and
# refused by the Encoder when the preprocessing keeps the camera's aspect ratio (keep_aspect).
FIXED_SIZE_BACKENDS = ('tensorrt',)


def auto_candidates(device: str = 'auto', precision: str = 'auto', dynamic_size: bool = False
                    ) -> list[tuple[str, str]]:
    """List the (backend, device) pairs that ``auto`` tries for a requested device and precision, in order.

    With ``dynamic_size`` only backends that take inputs of any height and width.
    """
    from .capabilities import cpu_supports_bf16
    gpu = [c for c in AUTO_ORDER if c.endswith(':cuda')
           and not (dynamic_size and c.partition(':')[0] in FIXED_SIZE_BACKENDS)]
    cpu = [c for c in AUTO_ORDER if c.endswith(':cpu')]
    if precision in ('auto', 'bf16') and cpu_supports_bf16():
        cpu = AUTO_ORDER_CPU_BF16
    if device == 'cpu':
        order = cpu
    elif device.startswith('cuda'):
        order = gpu
    else:
        order = gpu + cpu
    out = []
    for entry in order:
        name, _, dev = entry.partition(':')
        out.append((name, device if device.startswith('cuda') and dev == 'cuda' else dev))
    return out


def make_backend(name: str, config: ModelConfig, weights: str | Path | None = None, **options) -> EncoderBackend:
    """Build the named backend; ``auto`` picks the fastest available and says which and why."""
    if name == 'auto':
        device = options.pop('device', 'auto') or 'auto'
        options.setdefault('precision', 'auto')
        if options['precision'] == 'auto' and not device.startswith('cuda'):
            from .capabilities import cpu_supports_bf16
            log.info('backend auto: %s', 'this CPU computes bf16 natively (AVX512_BF16/AMX-BF16): CPU backends '
                     'run bf16' if cpu_supports_bf16() else 'this CPU has no native bf16 (AVX512_BF16/AMX-BF16): '
                     'CPU backends run FP32 (int8 on request, with calibration images)')
        reasons = []
        for candidate, dev in auto_candidates(device, options['precision'], bool(options.get('dynamic_size'))):
            if dev == 'cuda' and not _cuda_present():
                reasons.append(f'{candidate}:{dev}: no CUDA GPU')
                continue
            try:
                backend = BACKENDS[candidate](config, weights, device=dev, **options)
            except BackendError as err:
                reasons.append(f'{candidate}:{dev}: {err}')
                log.debug('backend auto: %s on %s unavailable: %s', candidate, dev, err)
                continue
            log.info('backend auto -> %s on %s, %s (%s)%s', candidate, backend.device, backend.precision,
                     backend.describe(), ('; skipped ' + '; '.join(reasons)) if reasons else '')
            return backend
        raise BackendError('no encoder backend available: ' + '; '.join(reasons))
    if name not in BACKENDS:
        raise ConfigError(f'unknown backend {name!r}; valid: {", ".join(backend_names())}')
    return BACKENDS[name](config, weights, **options)


def _cuda_present() -> bool:
    import torch
    return torch.cuda.is_available()
