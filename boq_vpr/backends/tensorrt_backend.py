"""TensorRT backend (TensorRT 10 Python API): build, save, load and run an engine from the ONNX export.

Steps kept apart as in TensorRT's samples and Polygraphy:

- ``build_engine``: parse the ONNX file, set FP32/FP16/INT8 (INT8 calibrated with an entropy
  calibrator on a folder of images, at a calibration profile of exactly the calibration batch),
  one optimization profile (batch 1..max_batch at the fixed input size), a persistent timing cache;
  returns the serialized engine;
- ``TensorRTBackend._load_or_build``: the engine cache (``engine_cache.EngineKey``: ONNX sha256,
  TensorRT version, GPU name, precision, input shapes, builder settings and, for INT8, the digest
  of the calibration set); a stale or foreign engine is rebuilt with the reason logged, one that
  TensorRT cannot deserialize is refused naming the file; ``force_rebuild`` rebuilds;
- ``TensorRTBackend``: deserializes, finds the input and output tensors by name and logs them,
  allocates device buffers once, runs on its own CUDA stream (ordered after the caller's stream for
  CUDA inputs) and copies back only the descriptor.

Device memory and the stream come from PyTorch (already a dependency, and JetPack ships a CUDA
build of it), so no separate CUDA Python binding is needed.

Static check: every TensorRT call here goes through ``import tensorrt as trt`` inside the function
that uses it, which mypy resolves against ``tensorrt-stubs`` (``scripts/check_tensorrt_types.py``,
run by ``test/test_trt_static.py``): a misspelled or removed TensorRT API fails CI without a GPU.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ..errors import BackendError, ExportError
from ..export import DESCRIPTOR_NAME, INPUT_NAME
from ..models.config import ModelConfig
from ..values import file_sha256
from .common import check_input
from .engine_cache import EngineKey, cache_dir, read_engine_key, write_engine
from .onnx_files import calibration_files, folder_digest, resolve_onnx

if TYPE_CHECKING:  # the static check sees the real API (tensorrt-stubs); at run time TensorRT is optional
    import tensorrt as trt

log = logging.getLogger(__name__)

PRECISIONS = ('auto', 'fp32', 'fp16', 'int8')
DEFAULT_MAX_BATCH = 8
WORKSPACE_BYTES = 2 << 30
# Layers kept in FP32 in fp16/int8 engines of TensorRT 10 (LayerNorm over 512 channels overflows in FP16).
KEEP_FP32_LAYERS = ('NORMALIZATION', 'REDUCE', 'SOFTMAX')
CALIBRATION_BATCH = 8
CALIBRATION_MAX_IMAGES = 256
CALIBRATOR = 'entropy2'


def import_tensorrt() -> ModuleType:
    """Import the ``tensorrt`` module, or raise BackendError saying how to install it.

    Written for the TensorRT 10 API. With TensorRT 11, which removed the FP16/INT8 builder flags
    and implicit INT8 calibration, fp32 and fp16 engines are built as strongly typed networks from
    the FP32 or mixed-FP16 export; int8 needs TensorRT 10.
    """
    try:
        import tensorrt
    except ImportError as err:
        raise BackendError('TensorRT is not installed: on a desktop GPU pip install tensorrt (pulls NVIDIA\'s '
                           'libraries; see README), on a Jetson use JetPack\'s python3-libnvinfer') from err
    version = getattr(tensorrt, '__version__', None)
    if not isinstance(version, str):
        # tensorrt-stubs installed into site-packages leaves a 'tensorrt' folder holding only .pyi files
        raise BackendError(f'the tensorrt module found at {list(getattr(tensorrt, "__path__", []))} is not TensorRT '
                           '(no __version__; type stubs only?): install TensorRT itself (pip install tensorrt, '
                           'or JetPack)')
    if int(version.split('.')[0]) < 10:
        raise BackendError(f'TensorRT {version} found; this backend needs TensorRT 10 '
                           '(JetPack 6.1+, or pip install "tensorrt>=10,<11")')
    return tensorrt


def weak_typing(module: ModuleType) -> bool:
    """Tell whether this TensorRT has the FP16/INT8 builder flags and implicit INT8 calibration.

    True for TensorRT 10; False where it builds strongly typed networks only, taking precisions from
    the graph (TensorRT 11).
    A feature probe by name on purpose: TensorRT 11 removed these names.
    """
    return hasattr(module.BuilderFlag, 'FP16') and hasattr(module, 'IInt8EntropyCalibrator2')


def gpu_name(device: torch.device) -> str:
    """GPU model and compute capability, as engines depend on both."""
    major, minor = torch.cuda.get_device_capability(device)
    return f'{torch.cuda.get_device_name(device)} sm_{major}{minor}'


def precision_constraints(precision: str, strongly_typed: bool) -> str:
    """Return the layer precision constraints a build applies, as stored in the engine key ('' for none)."""
    if precision in ('fp16', 'int8') and not strongly_typed:
        return 'prefer:' + ','.join(KEEP_FP32_LAYERS) + '=fp32'
    return ''


def calibration_digest(folder: Path, max_images: int = CALIBRATION_MAX_IMAGES,
                       batch_size: int = CALIBRATION_BATCH) -> str:
    """Identify an INT8 calibration: the image set (names and sizes), images used, batch and calibrator.

    Part of the engine key and of the calibration cache's file name.
    """
    blob = f'{folder_digest(folder)}:max{max_images}:b{batch_size}:{CALIBRATOR}'
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _make_logger() -> 'trt.ILogger':
    import tensorrt as trt
    levels = {trt.ILogger.Severity.INTERNAL_ERROR: logging.ERROR, trt.ILogger.Severity.ERROR: logging.ERROR,
              trt.ILogger.Severity.WARNING: logging.WARNING, trt.ILogger.Severity.INFO: logging.DEBUG,
              trt.ILogger.Severity.VERBOSE: logging.DEBUG}

    class Logger(trt.ILogger):
        """Forwards TensorRT's messages to the ``logging`` module."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:  # noqa: D401 - TensorRT callback
            log.log(levels.get(severity, logging.INFO), 'TensorRT: %s', msg)

    return Logger()


def _calibrator(batches: Sequence[np.ndarray], cache_file: Path, device: torch.device) -> 'trt.IInt8Calibrator':
    """Make an entropy calibrator feeding preprocessed batches (all of one shape) from device memory."""
    import tensorrt as trt

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = list(batches)
            self.index = 0
            self.buffer = torch.empty(self.batches[0].shape, dtype=torch.float32, device=device)

        def get_batch_size(self) -> int:
            return int(self.batches[0].shape[0])

        def get_batch(self, names: list[str]) -> list[int]:
            if self.index >= len(self.batches):
                return None  # type: ignore[return-value]  # TensorRT: None ends the calibration
            self.buffer.copy_(torch.from_numpy(self.batches[self.index]))
            torch.cuda.synchronize(device)   # TensorRT reads the buffer on its own stream
            self.index += 1
            return [int(self.buffer.data_ptr())]

        def read_calibration_cache(self) -> bytes:
            return cache_file.read_bytes() if cache_file.is_file() else None  # type: ignore[return-value]

        def write_calibration_cache(self, cache) -> None:  # noqa: ANN001 - a buffer
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_bytes(bytes(cache))

    return Calibrator()


def _dims(shape: Sequence[int]) -> 'trt.Dims':
    import tensorrt as trt
    return trt.Dims([int(v) for v in shape])


def _shape(dims: 'trt.Dims') -> tuple[int, ...]:
    return tuple(int(dims[i]) for i in range(len(dims)))


def build_engine(onnx_path: Path, precision: str, shapes: tuple[tuple[int, ...], ...], *,
                 timing_cache: Path | None = None, calibration_batches: Sequence[np.ndarray] | None = None,
                 calibration_cache: Path | None = None, device: torch.device | None = None,
                 workspace: int = WORKSPACE_BYTES, strongly_typed: bool = False) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine for ``precision`` and the (min, opt, max) input ``shapes``.

    Raises ExportError with the parser's messages if the graph is refused.

    ``strongly_typed``: precisions come from the graph (the mixed FP16 export for fp16) instead of
    builder flags; required by TensorRT 11. INT8 calibration runs at a profile of exactly the
    calibration batch's shape (min = opt = max), since TensorRT calibrates at the profile's opt shape.
    """
    import_tensorrt()
    import tensorrt as trt
    logger = _make_logger()
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f'{onnx_path}: TensorRT {trt.__version__} ONNX parser refused it: {errors}')
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    cache_blob = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b''
    tcache = config.create_timing_cache(cache_blob)
    config.set_timing_cache(tcache, ignore_mismatch=True)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, *(_dims(s) for s in shapes))
    config.add_optimization_profile(profile)
    if precision_constraints(precision, strongly_typed):
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        keep = {getattr(trt.LayerType, name) for name in KEEP_FP32_LAYERS}
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.type in keep:
                layer.precision = trt.float32
    if precision == 'int8':
        if strongly_typed:
            raise BackendError('int8 engines need TensorRT 10 (implicit INT8 calibration was removed in TensorRT 11)')
        if not calibration_batches:
            raise BackendError('TensorRT int8 needs calibration images (calibration=FOLDER, --calibration)')
        calib_shape = tuple(int(v) for v in calibration_batches[0].shape)
        if any(tuple(b.shape) != calib_shape for b in calibration_batches):
            raise BackendError(f'calibration batches must all have the shape {calib_shape}')
        if not shapes[0][0] <= calib_shape[0] <= shapes[2][0] or tuple(calib_shape[1:]) != tuple(shapes[2][1:]):
            raise BackendError(f'calibration batch {calib_shape} does not fit the engine profile {shapes}')
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _calibrator(calibration_batches, calibration_cache or onnx_path.with_suffix('.calib'),
                                             device or torch.device('cuda'))
        calib_profile = builder.create_optimization_profile()
        calib_profile.set_shape(INPUT_NAME, _dims(calib_shape), _dims(calib_shape), _dims(calib_shape))
        if not config.set_calibration_profile(calib_profile):
            raise ExportError(f'TensorRT refused the calibration profile {calib_shape}')
    log.info('TensorRT %s: building %s engine from %s for input %s (min/opt/max); this can take minutes',
             trt.__version__, precision, onnx_path, shapes)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f'TensorRT failed to build an engine from {onnx_path} (see the TensorRT errors above)')
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def load_engine(data: bytes, source: str,
                device: torch.device | None = None) -> tuple['trt.Runtime', 'trt.ICudaEngine']:
    """Deserialize an engine; ExportError naming ``source`` when TensorRT refuses it."""
    import_tensorrt()
    import tensorrt as trt
    runtime = trt.Runtime(_make_logger())
    with torch.cuda.device(device or torch.device('cuda')):
        engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise ExportError(f'{source}: TensorRT {trt.__version__} cannot load this engine (corrupt, or built by '
                          'another TensorRT version or for another GPU); delete it or rebuild with force_rebuild')
    return runtime, engine


class TensorRTBackend:
    """Inference with a TensorRT engine on one CUDA GPU."""

    name = 'tensorrt'

    def __init__(self, config: ModelConfig, weights: str | Path | None = None, device: str = 'auto',
                 precision: str = 'auto', onnx_path: str | Path | None = None, engine_path: str | Path | None = None,
                 engine_cache_dir: str | Path | None = None, force_rebuild: bool = False,
                 max_batch: int = DEFAULT_MAX_BATCH, opt_batch: int = 1, calibration: str | Path | None = None,
                 workspace: int = WORKSPACE_BYTES, **_ignored) -> None:
        trt_module = import_tensorrt()
        if device == 'auto':
            device = 'cuda'
        if not device.startswith('cuda'):
            raise BackendError(f'tensorrt backend runs on CUDA GPUs only, not {device!r}')
        if not torch.cuda.is_available():
            raise BackendError(f'tensorrt backend: CUDA is not available to torch {torch.__version__}; TensorRT '
                               'buffers are allocated with PyTorch, install a CUDA build of torch')
        if precision not in PRECISIONS:
            raise BackendError(f'tensorrt: precision {precision!r} not supported; valid: {", ".join(PRECISIONS)}')
        if max_batch < 1 or not 1 <= opt_batch <= max_batch:
            raise BackendError(f'tensorrt: need 1 <= opt_batch ({opt_batch}) <= max_batch ({max_batch})')
        self.device_obj = torch.device(device)
        self.device = str(self.device_obj)
        self.config = config
        self.precision = 'fp16' if precision == 'auto' else precision
        self.strongly_typed = not weak_typing(trt_module)
        version = str(trt_module.__version__)
        if self.strongly_typed and self.precision == 'int8':
            raise BackendError(f'TensorRT {version} builds strongly typed networks only and has no implicit '
                               'INT8 calibration; for int8 install TensorRT 10 (pip install '
                               '"tensorrt-cu13>=10.13,<11", or tensorrt-cu12 to match the CUDA of torch; '
                               'JetPack 6.1+ ships TensorRT 10)')
        self.calibration = Path(calibration) if calibration is not None else None
        if self.precision == 'int8' and self.calibration is None:
            raise BackendError('tensorrt int8 needs calibration images of the deployment camera: calibration=FOLDER '
                               '(--calibration); their digest is part of the engine cache key')
        if max_batch < CALIBRATION_BATCH and self.precision == 'int8':
            raise BackendError(f'tensorrt int8: max_batch ({max_batch}) must be at least the calibration batch '
                               f'({CALIBRATION_BATCH})')
        # TensorRT 10: build from the FP32 graph with precision flags. Strongly typed: the graph's own types.
        # INT8 is calibrated by the builder, so the graph itself is asked for at graph_precision.
        graph_precision = 'fp16' if self.strongly_typed and self.precision == 'fp16' else 'fp32'
        onnx, spec = resolve_onnx(self.name, config, weights, onnx_path, precision=graph_precision,
                                  export_precision=graph_precision)
        if spec.precision != graph_precision:
            raise BackendError(f'{onnx} is a {spec.precision} export; TensorRT {version} builds {self.precision} '
                               f'engines from the {graph_precision} export (`boq-vpr export --precision '
                               f'{graph_precision}`)')
        h, w = config.image_size
        shapes = ((1, 3, h, w), (opt_batch, 3, h, w), (max_batch, 3, h, w))
        self.workspace = int(workspace)
        calib = calibration_digest(self.calibration) if self.precision == 'int8' and self.calibration else ''
        key = EngineKey(onnx_sha256=file_sha256(onnx), tensorrt=version, gpu=gpu_name(self.device_obj),
                        precision=self.precision, min_shape=shapes[0], opt_shape=shapes[1], max_shape=shapes[2],
                        workspace_bytes=self.workspace, strongly_typed=self.strongly_typed,
                        precision_constraints=precision_constraints(self.precision, self.strongly_typed),
                        calibration=calib)
        folder = Path(engine_cache_dir) if engine_cache_dir else cache_dir() / 'engines'
        engine_file = Path(engine_path) if engine_path is not None else folder / key.file_name(onnx.stem)
        self.engine_path = engine_file
        self.tensorrt_version = version
        data = self._load_or_build(engine_file, key, onnx, shapes, folder, force_rebuild)
        self.runtime, self.engine = load_engine(data, str(engine_file), self.device_obj)
        self.context = self.engine.create_execution_context()
        self._bind()

    def _load_or_build(self, engine_file: Path, key: EngineKey, onnx: Path, shapes: tuple[tuple[int, ...], ...],
                       folder: Path, force_rebuild: bool) -> bytes:
        reason = 'forced rebuild' if force_rebuild else None
        if reason is None and engine_file.is_file():
            found = read_engine_key(engine_file)
            if found is None:
                reason = f'{engine_file} has no readable key file {engine_file.name}.json (foreign engine)'
            elif found != key:
                reason = f'{engine_file} does not fit: ' + '; '.join(key.mismatches(found))
            else:
                log.info('TensorRT: loading cached engine %s', engine_file)
                return engine_file.read_bytes()
        elif reason is None:
            reason = 'no cached engine'
        log.warning('TensorRT: building engine %s (%s)', engine_file, reason)
        batches = None
        calib_cache = None
        if key.precision == 'int8':
            assert self.calibration is not None   # checked in __init__
            batches = _calibration_batches(self.config, self.calibration)
            calib_cache = folder / f'{onnx.stem}-{key.calibration}.calib'
        data = build_engine(onnx, key.precision, shapes, timing_cache=folder / 'timing.cache',
                            calibration_batches=batches, calibration_cache=calib_cache, device=self.device_obj,
                            workspace=self.workspace, strongly_typed=self.strongly_typed)
        write_engine(engine_file, data, key)
        log.info('TensorRT: saved engine %s (%.1f MiB) and its key', engine_file, len(data) / 2**20)
        return data

    def _bind(self) -> None:
        """Find tensors by name, log them, allocate device buffers once and bind their addresses."""
        import tensorrt as trt
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if inputs != [INPUT_NAME] or DESCRIPTOR_NAME not in outputs:
            raise ExportError(f'{self.engine_path}: expected input {INPUT_NAME!r} and output {DESCRIPTOR_NAME!r}, '
                              f'found inputs {inputs} and outputs {outputs}')
        for n in names:
            log.info('TensorRT tensor %-10s %-6s %s %s', n, 'input' if n in inputs else 'output',
                     self.engine.get_tensor_dtype(n), _shape(self.engine.get_tensor_shape(n)))
        profile = self.engine.get_tensor_profile_shape(INPUT_NAME, 0)
        self.max_batch = int(profile[2][0])
        self.image_size = (int(profile[2][2]), int(profile[2][3]))
        self.stream = torch.cuda.Stream(self.device_obj)
        self.input = torch.empty((self.max_batch, 3, *self.image_size), dtype=torch.float32, device=self.device_obj)
        self.context.set_input_shape(INPUT_NAME, tuple(self.input.shape))
        self.buffers = {INPUT_NAME: self.input}
        for n in outputs:
            shape = _shape(self.context.get_tensor_shape(n))
            dtype = torch.float16 if self.engine.get_tensor_dtype(n) == trt.DataType.HALF else torch.float32
            self.buffers[n] = torch.empty(shape, dtype=dtype, device=self.device_obj)
        for n, buf in self.buffers.items():
            self.context.set_tensor_address(n, buf.data_ptr())
        self.descriptor_dim = int(self.buffers[DESCRIPTOR_NAME].shape[1])
        self.host_out = torch.empty((self.max_batch, self.descriptor_dim), dtype=torch.float32).pin_memory()
        self.host_in = torch.empty(tuple(self.input.shape), dtype=torch.float32).pin_memory()
        log.info('TensorRT engine %s: batch 1..%d at %dx%d, %s, on %s', self.engine_path, self.max_batch,
                 *self.image_size, self.precision, gpu_name(self.device_obj))

    def infer(self, batch: torch.Tensor) -> np.ndarray:
        check_input(batch, self.image_size, self.name)
        out = []
        for start in range(0, batch.shape[0], self.max_batch):
            out.append(self._run(batch[start:start + self.max_batch]))
        return np.concatenate(out, axis=0)

    def _run(self, chunk: torch.Tensor) -> np.ndarray:
        n = int(chunk.shape[0])
        if chunk.is_cuda:
            # The caller wrote ``chunk`` on its current stream: order our copy after that work, and keep
            # the caller's allocator from reusing the memory before our stream has read it.
            self.stream.wait_stream(torch.cuda.current_stream(chunk.device))
            chunk.record_stream(self.stream)
        with torch.cuda.stream(self.stream):
            if chunk.is_cuda:
                self.input[:n].copy_(chunk, non_blocking=True)
            else:
                self.host_in[:n].copy_(chunk)
                self.input[:n].copy_(self.host_in[:n], non_blocking=True)
            self.context.set_input_shape(INPUT_NAME, (n, 3, *self.image_size))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise BackendError(f'TensorRT execution failed on {self.engine_path}')
            self.host_out[:n].copy_(self.buffers[DESCRIPTOR_NAME][:n], non_blocking=True)
        self.stream.synchronize()
        return self.host_out[:n].numpy().copy()

    def describe(self) -> dict:
        return {'backend': self.name, 'device': self.device, 'precision': self.precision,
                'tensorrt': self.tensorrt_version, 'gpu': gpu_name(self.device_obj), 'engine': str(self.engine_path),
                'max_batch': self.max_batch, 'input': INPUT_NAME, 'output': DESCRIPTOR_NAME,
                'calibration': str(self.calibration) if self.calibration else None}


def _calibration_batches(config: ModelConfig, folder: Path, max_images: int = CALIBRATION_MAX_IMAGES,
                         batch_size: int = CALIBRATION_BATCH) -> list[np.ndarray]:
    """Preprocessed calibration batches of exactly ``batch_size`` images (a shorter last batch is dropped)."""
    from ..export import calibration_batches
    from ..inputs.images import load_image
    from ..preprocessing import Preprocessor
    files = calibration_files(folder, max_images)
    h, w = config.image_size
    pre = Preprocessor((int(h), int(w)), 'fixed', config.stride if config.is_vit else 1)
    batches = calibration_batches([load_image(p) for p in files], pre, batch_size=batch_size)
    full = [b for b in batches if b.shape[0] == batch_size]
    if not full:
        raise BackendError(f'{folder}: {len(files)} calibration images make no full batch of {batch_size}')
    return full
