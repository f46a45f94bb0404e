"""OpenVINO backend (optional extra ``openvino``): the exported ONNX graph on the CPU.

OpenVINO's CPU plugin runs the graph in bf16 on CPUs that compute bf16 natively (AVX512_BF16,
AMX) when asked with ``INFERENCE_PRECISION_HINT``; on this project's 2-core AVX512_BF16 machine that
was the fastest CPU path measured (see README). ``precision='auto'`` takes bf16 where the plugin
reports the BF16 capability and fp32 elsewhere; ``int8`` runs the calibrated QDQ ONNX copy.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import BackendError, ExportError
from ..export import ATTENTION_NAME, DESCRIPTOR_NAME, INPUT_NAME, read_onnx
from ..models.config import ModelConfig
from .capabilities import physical_cores
from .common import check_input
from .onnx_files import resolve_onnx

log = logging.getLogger(__name__)

PRECISIONS = ('auto', 'fp32', 'bf16', 'int8')
_HINTS = {'fp32': 'f32', 'bf16': 'bf16', 'int8': 'f32'}


class OpenVinoBackend:
    """Inference with an OpenVINO compiled model on the CPU."""

    name = 'openvino'

    def __init__(self, config: ModelConfig, weights: str | Path | None = None, device: str = 'auto',
                 precision: str = 'auto', onnx_path: str | Path | None = None, threads: int | None = None,
                 calibration: str | Path | None = None, dynamic_size: bool = False, attention: bool = False,
                 **_ignored) -> None:
        try:
            import openvino as ov
        except ImportError as err:
            raise BackendError('openvino is not installed: pip install "boq_vpr[openvino]" '
                               '(or pip install openvino)') from err
        if device not in ('auto', 'cpu'):
            raise BackendError(f'openvino backend runs on the CPU only, not {device!r}; use tensorrt, onnxruntime '
                               'or torch for CUDA')
        self.device = 'cpu'
        self.config = config
        if precision not in PRECISIONS:
            raise BackendError(f'openvino: precision {precision!r} not supported; valid: {", ".join(PRECISIONS)}')
        core = ov.Core()
        caps = set(core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))
        if precision == 'auto':
            precision = 'bf16' if 'BF16' in caps else 'fp32'
            log.info('openvino: precision auto -> %s (CPU capabilities %s)', precision, sorted(caps))
        if precision == 'bf16' and 'BF16' not in caps:
            raise BackendError(f'openvino: this CPU has no native bf16 (capabilities {sorted(caps)}); use fp32')
        self.precision = precision

        path, spec = resolve_onnx(self.name, config, weights, onnx_path, precision=precision,
                                  calibration=calibration, dynamic_size=dynamic_size, attention=attention)
        if spec.precision == 'int8' and precision != 'int8':
            raise BackendError(f'{path} is an INT8 model; use precision int8 or the FP32 export')
        self.onnx_path = path
        _, self.spec = read_onnx(path)
        self.threads = threads or physical_cores()
        try:
            model = core.read_model(str(path))
            self.compiled = core.compile_model(model, 'CPU', {
                'INFERENCE_PRECISION_HINT': _HINTS[precision], 'PERFORMANCE_HINT': 'LATENCY',
                'INFERENCE_NUM_THREADS': self.threads})
        except Exception as err:
            raise ExportError(f'{path}: OpenVINO cannot compile it: {err}') from err
        names = {n for port in self.compiled.inputs for n in port.get_names()}
        outs = {n for port in self.compiled.outputs for n in port.get_names()}
        if INPUT_NAME not in names or DESCRIPTOR_NAME not in outs:
            raise ExportError(f'{path}: expected input {INPUT_NAME!r} and output {DESCRIPTOR_NAME!r}, found '
                              f'{sorted(names)} -> {sorted(outs)}')
        if attention and ATTENTION_NAME not in outs:
            raise BackendError(f'{path} has no {ATTENTION_NAME!r} output; export it with attention '
                               '(`boq-vpr export --attention`) or leave onnx_path unset')
        self.supports_attention = ATTENTION_NAME in outs
        self._output = self.compiled.output(DESCRIPTOR_NAME)
        self.request = self.compiled.create_infer_request()
        self.descriptor_dim = int(self.spec.config.descriptor_dim)
        self.version = ov.get_version()
        log.info('openvino %s: %s on CPU, %s, %d threads; input %s %s, output %s %s', self.version, path,
                 precision, self.threads, INPUT_NAME, self.compiled.input(INPUT_NAME).get_partial_shape(),
                 DESCRIPTOR_NAME, self._output.get_partial_shape())

    def infer(self, batch: torch.Tensor) -> np.ndarray:
        check_input(batch, self.spec.image_size, self.name)
        x = batch.detach().cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
        self.request.infer({INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})
        return np.array(self.request.get_tensor(self._output).data, dtype=np.float32, copy=True)

    def infer_with_attention(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Compute descriptors ``[N, D]`` and cross-attention ``[N, blocks, Q, h*w]`` in one inference.

        One inference of the same compiled model (needs the attention output: ``attention=True``).
        """
        if not self.supports_attention:
            raise BackendError(f'openvino: {self.onnx_path} has no {ATTENTION_NAME!r} output; create the '
                               'backend with attention=True to export one')
        desc = self.infer(batch)
        attn = np.array(self.request.get_tensor(self.compiled.output(ATTENTION_NAME)).data, dtype=np.float32, copy=True)
        return desc, attn

    def describe(self) -> dict:
        return {'backend': self.name, 'device': self.device, 'precision': self.precision, 'openvino': self.version,
                'threads': self.threads, 'onnx': str(self.onnx_path), 'input': INPUT_NAME, 'output': DESCRIPTOR_NAME}
