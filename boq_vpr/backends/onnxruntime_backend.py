"""ONNX Runtime backend: the exported graph on the CPU, CUDA or TensorRT execution provider.

Steps as in Polygraphy: get the ONNX (a given file, or the cached export of the configuration),
create the session (graph optimizations ORT_ENABLE_ALL, which includes the NCHWc layout on x86;
intra-op threads = physical cores; sequential execution; worker threads do not spin between
calls unless ``spin=True``), find ``images`` and ``descriptor`` by
name and log them, then run with only the descriptor fetched.

Precisions: CPU ``fp32`` and ``int8`` (a calibrated QDQ copy, see ``boq_vpr.export.quantize``);
CUDA ``fp32`` and ``fp16`` (the mixed FP16 export: FP16 weights and math, LayerNorm and softmax in
FP32); ``use_trt_ep=True`` puts ONNX Runtime's TensorRT execution provider first where installed.
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
from .engine_cache import cache_dir
from .onnx_files import resolve_onnx

log = logging.getLogger(__name__)

CPU_PRECISIONS = ('auto', 'fp32', 'int8')
CUDA_PRECISIONS = ('auto', 'fp32', 'fp16')


def _ort():
    try:
        import onnxruntime
    except ImportError as err:
        raise BackendError('onnxruntime is not installed: pip install onnxruntime (CPU) or onnxruntime-gpu') from err
    return onnxruntime


class OnnxRuntimeBackend:
    """Inference with an ONNX Runtime session."""

    name = 'onnxruntime'

    def __init__(self, config: ModelConfig, weights: str | Path | None = None, device: str = 'auto',
                 precision: str = 'auto', onnx_path: str | Path | None = None, threads: int | None = None,
                 calibration: str | Path | None = None, dynamic_size: bool = False, spin: bool = False,
                 use_trt_ep: bool = False, optimization: str = 'all', attention: bool = False,
                 **_ignored) -> None:
        ort = _ort()
        available = ort.get_available_providers()
        if device == 'auto':
            device = 'cuda' if 'CUDAExecutionProvider' in available else 'cpu'
        self.device = device
        self.config = config
        if device.startswith('cuda'):
            if 'CUDAExecutionProvider' not in available:
                raise BackendError(f'onnxruntime: device {device!r} needs the CUDA execution provider, which this '
                                   f'onnxruntime {ort.__version__} lacks (providers: {", ".join(available)}); '
                                   'pip install onnxruntime-gpu, or use device cpu')
            if precision not in CUDA_PRECISIONS:
                raise BackendError(f'onnxruntime on CUDA: precision {precision!r} not supported; valid: '
                                   f'{", ".join(CUDA_PRECISIONS)}')
            if precision == 'auto':
                precision = 'fp16'
        elif device == 'cpu':
            if precision not in CPU_PRECISIONS:
                raise BackendError(f'onnxruntime on CPU: precision {precision!r} not supported; valid: '
                                   f'{", ".join(CPU_PRECISIONS)} (bf16 on CPU: openvino or torch backend)')
            if precision == 'auto':
                precision = 'fp32'
        else:
            raise BackendError(f'onnxruntime: unknown device {device!r}; valid: auto, cpu, cuda, cuda:N')
        self.precision = precision

        path, spec = resolve_onnx(self.name, config, weights, onnx_path, precision=precision,
                                  export_precision='fp16' if precision == 'fp16' else 'fp32',
                                  calibration=calibration, dynamic_size=dynamic_size, attention=attention)
        if precision != 'int8' and spec.precision != precision:
            raise BackendError(f'{path} is a {spec.precision} export but precision {precision} was asked for; '
                               f'use precision {spec.precision} or `boq-vpr export --precision {precision}`')
        self.onnx_path = path
        _, self.spec = read_onnx(path)

        levels = {'all': ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                  'extended': ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  'basic': ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  'disabled': ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
        if optimization not in levels:
            raise BackendError(f'onnxruntime: optimization {optimization!r} unknown; valid: {", ".join(levels)}')
        self.optimization = optimization
        opts = ort.SessionOptions()
        opts.graph_optimization_level = levels[optimization]
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.threads = threads or physical_cores()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # Idle worker threads spinning between calls steal the CPU from the SLAM stack next to us.
        opts.add_session_config_entry('session.intra_op.allow_spinning', '1' if spin else '0')
        self.spin = spin
        providers: list = ['CPUExecutionProvider']
        if device.startswith('cuda'):
            index = int(device.split(':')[1]) if ':' in device else 0
            providers = [('CUDAExecutionProvider', {'device_id': index}), 'CPUExecutionProvider']
            if use_trt_ep and 'TensorrtExecutionProvider' in available:
                trt_cache = cache_dir() / 'ort_trt'
                trt_cache.mkdir(parents=True, exist_ok=True)
                providers.insert(0, ('TensorrtExecutionProvider', {
                    'device_id': index, 'trt_fp16_enable': precision == 'fp16', 'trt_engine_cache_enable': True,
                    'trt_engine_cache_path': str(trt_cache), 'trt_timing_cache_enable': True}))
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as err:
            raise ExportError(f'{path}: ONNX Runtime cannot load it: {err}') from err
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if INPUT_NAME not in inputs or DESCRIPTOR_NAME not in outputs:
            raise ExportError(f'{path}: expected input {INPUT_NAME!r} and output {DESCRIPTOR_NAME!r}, found inputs '
                              f'{list(inputs)} and outputs {list(outputs)}')
        if attention and ATTENTION_NAME not in outputs:
            raise BackendError(f'{path} has no {ATTENTION_NAME!r} output; export it with attention '
                               '(`boq-vpr export --attention`) or leave onnx_path unset')
        self.supports_attention = ATTENTION_NAME in outputs
        self.input_shape = inputs[INPUT_NAME].shape
        self.descriptor_dim = int(self.spec.config.descriptor_dim)
        self.providers = self.session.get_providers()
        log.info('onnxruntime %s: %s, providers %s, %d threads; input %s %s, outputs %s', ort.__version__, path,
                 self.providers, self.threads, INPUT_NAME, self.input_shape,
                 {n: o.shape for n, o in outputs.items()})

    def infer(self, batch: torch.Tensor) -> np.ndarray:
        check_input(batch, self.spec.image_size, self.name)
        x = batch.detach().cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run([DESCRIPTOR_NAME], {INPUT_NAME: x})[0]

    def infer_with_attention(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Compute descriptors ``[N, D]`` and cross-attention ``[N, blocks, Q, h*w]`` in one run.

        One run of the same session (needs an export with the attention output: ``attention=True``).
        """
        if not self.supports_attention:
            raise BackendError(f'onnxruntime: {self.onnx_path} has no {ATTENTION_NAME!r} output; create the '
                               'backend with attention=True to export one')
        check_input(batch, self.spec.image_size, self.name)
        x = batch.detach().cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
        desc, attn = self.session.run([DESCRIPTOR_NAME, ATTENTION_NAME],
                                      {INPUT_NAME: np.ascontiguousarray(x, np.float32)})
        return desc, attn

    def describe(self) -> dict:
        import onnxruntime
        return {'backend': self.name, 'device': self.device, 'precision': self.precision,
                'onnxruntime': onnxruntime.__version__, 'providers': self.providers, 'threads': self.threads,
                'optimization': self.optimization, 'spin': self.spin,
                'onnx': str(self.onnx_path), 'input': [INPUT_NAME, self.input_shape], 'output': DESCRIPTOR_NAME}
