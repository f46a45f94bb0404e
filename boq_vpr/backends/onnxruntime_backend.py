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

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import BackendError, ExportError, ImageError
from ..export import ATTENTION_NAME, DESCRIPTOR_NAME, INPUT_NAME, check_spec_matches, read_onnx
from ..models.config import ModelConfig
from .capabilities import physical_cores
from .engine_cache import cache_dir, cached_onnx

log = logging.getLogger(__name__)

CPU_PRECISIONS = ('auto', 'fp32', 'int8')
CUDA_PRECISIONS = ('auto', 'fp32', 'fp16')


def _ort():
    try:
        import onnxruntime
    except ImportError as err:
        raise BackendError('onnxruntime is not installed: pip install onnxruntime (CPU) or onnxruntime-gpu') from err
    return onnxruntime


def check_input(batch: torch.Tensor | np.ndarray, image_size: tuple[int, int] | None, backend: str) -> None:
    """Raise ImageError naming the expected shape when ``batch`` does not fit the graph."""
    shape = tuple(batch.shape)
    if len(shape) != 4 or shape[1] != 3 or shape[0] < 1:
        raise ImageError(f'{backend}: expected a batch [N, 3, H, W], got {list(shape)}')
    if image_size is not None and tuple(shape[2:]) != tuple(image_size):
        raise ImageError(f'{backend}: expected input [N, 3, {image_size[0]}, {image_size[1]}], got {list(shape)}; '
                         'preprocess to the exported size or export with --dynamic-size')


def folder_digest(folder: Path) -> str:
    """Hash of a folder's image file names and sizes (identifies a calibration set)."""
    from ..inputs.images import list_images
    h = hashlib.sha256()
    for p in list_images(folder, recursive=True):
        h.update(f'{p.relative_to(folder)}:{p.stat().st_size};'.encode())
    return h.hexdigest()[:16]


def int8_onnx(config: ModelConfig, weights: str | Path | None, fp32_onnx: Path, calibration: str | Path,
              max_images: int = 64) -> Path:
    """The INT8 copy of ``fp32_onnx`` calibrated on a folder of images (cached by folder content)."""
    from ..export import calibration_batches, quantize_int8
    from ..inputs.images import list_images, load_image
    from ..preprocessing import Preprocessor
    folder = Path(calibration)
    files = list_images(folder, recursive=True)
    step = max(1, len(files) // max_images)
    files = files[::step][:max_images]
    # keyed by the FP32 model's content too: a re-export with other weights under the same file
    # name must not reuse the old INT8 model
    # and by the quantization recipe: an INT8 model made with other settings is not reused
    from ..export.onnx_export import onnx_sha256
    from ..export.quantize import QUANT_RECIPE
    out = cache_dir() / 'onnx' / (f'{fp32_onnx.stem}-int8-{QUANT_RECIPE}-{onnx_sha256(fp32_onnx)[:16]}-'
                                  f'{folder_digest(folder)}-{len(files)}.onnx')
    if out.is_file():
        log.info('using cached INT8 model %s', out)
        return out
    images = [load_image(p) for p in files]
    pre = Preprocessor(tuple(config.image_size), 'fixed', config.stride if config.is_vit else 1)
    quantize_int8(fp32_onnx, out, calibration_batches(images, pre))
    return out


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

        if onnx_path is not None:
            path = Path(onnx_path)
            _, spec = read_onnx(path)
            check_spec_matches(spec, config, weights, str(path))
            if precision == 'int8' and spec.precision != 'int8':
                if calibration is None:
                    raise BackendError(f'{path} is FP32; int8 needs calibration images (calibration=FOLDER) '
                                       'or an INT8 file from `boq-vpr export --precision int8`')
                path = int8_onnx(config, weights, path, calibration)
            elif spec.precision != precision:
                raise BackendError(f'{path} is a {spec.precision} export but precision {precision} was asked for; '
                                   f'use precision {spec.precision} or `boq-vpr export --precision {precision}`')
        else:
            path = cached_onnx(config, weights, dynamic_size=dynamic_size, attention=attention,
                               precision='fp16' if precision == 'fp16' else 'fp32')
            if precision == 'int8':
                if calibration is None:
                    raise BackendError('onnxruntime int8 needs calibration images of the deployment camera: pass '
                                       'calibration=FOLDER (--calibration), or an INT8 ONNX from '
                                       '`boq-vpr export --precision int8`')
                path = int8_onnx(config, weights, path, calibration)
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
        """Descriptors ``[N, D]`` and cross-attention ``[N, blocks, Q, h*w]`` from one run of the
        same session (needs an export with the attention output: ``attention=True``)."""
        if not self.supports_attention:
            raise BackendError(f'onnxruntime: {self.onnx_path} has no {ATTENTION_NAME!r} output; create the '
                               'backend with attention=True to export one')
        check_input(batch, self.spec.image_size, self.name)
        x = batch.detach().cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
        desc, attn = self.session.run([DESCRIPTOR_NAME, ATTENTION_NAME], {INPUT_NAME: np.ascontiguousarray(x, np.float32)})
        return desc, attn

    def describe(self) -> dict:
        import onnxruntime
        return {'backend': self.name, 'device': self.device, 'precision': self.precision,
                'onnxruntime': onnxruntime.__version__, 'providers': self.providers, 'threads': self.threads,
                'optimization': self.optimization, 'spin': self.spin,
                'onnx': str(self.onnx_path), 'input': [INPUT_NAME, self.input_shape], 'output': DESCRIPTOR_NAME}
