"""GPU tests: CUDA backends and TensorRT engines.

They skip with the reason where no CUDA GPU, TensorRT or onnxruntime-gpu is present;
``scripts/gpu_check.py`` (step gpu_tests) runs them on a GPU machine. Images: Nordland frames where
``../shared`` is present, else generated camera frames (the offline GPU machine has no ``../shared``).
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from boq_vpr.backends.capabilities import has_module
from boq_vpr.encoder import Encoder
from boq_vpr.errors import ExportError, ImageError
from boq_vpr.inputs.images import list_images, load_image
from boq_vpr.models import get_config
from conftest import NORDLAND

pytestmark = pytest.mark.gpu
MODEL = 'resnet18_1024'

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason='no CUDA GPU (torch.cuda.is_available() is False)')
needs_trt = pytest.mark.skipif(not (torch.cuda.is_available() and has_module('tensorrt')),
                               reason='needs a CUDA GPU and TensorRT (pip install tensorrt, or JetPack)')


def _ort_cuda() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return 'CUDAExecutionProvider' in onnxruntime.get_available_providers()


needs_ort_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and _ort_cuda()),
                                    reason='needs a CUDA GPU and onnxruntime-gpu')


@pytest.fixture(scope='module', autouse=True)
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv('BOQ_VPR_CACHE', str(tmp_path_factory.mktemp('gpu-cache')))
    yield
    mp.undo()


def _generated_frames(n: int, seed: int = 0) -> list[np.ndarray]:
    """640x480 RGB frames of smooth random texture (no two alike)."""
    import cv2
    rng = np.random.default_rng(seed)
    return [cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC)
            for _ in range(n)]


@pytest.fixture(scope='module')
def images():
    if NORDLAND.is_dir():
        files = list_images(NORDLAND / 'summer')
        return [load_image(files[i]) for i in range(0, 3000, 250)]
    return _generated_frames(12)


@pytest.fixture(scope='module')
def calibration_dir(tmp_path_factory):
    """INT8 calibration images: Nordland winter frames, else generated frames written as PNG."""
    if NORDLAND.is_dir():
        return NORDLAND / 'winter'
    import cv2
    folder = tmp_path_factory.mktemp('calibration')
    for i, frame in enumerate(_generated_frames(32, seed=1)):
        cv2.imwrite(str(folder / f'{i:03d}.png'), frame[:, :, ::-1])
    return folder


@pytest.fixture(scope='module')
def reference(images):
    return Encoder(MODEL, backend='torch', device='cpu', precision='fp32', mode='eager').encode(images)


def _cos(a, b):
    return float((a * b).sum(1).min())


@needs_cuda
@pytest.mark.parametrize('precision,threshold,mode', [('fp32', 0.9999, 'graph'), ('fp16', 0.999, 'graph'),
                                                      ('fp16', 0.999, 'eager')])
def test_torch_cuda(images, reference, precision, threshold, mode):
    enc = Encoder(MODEL, backend='torch', device='cuda', precision=precision, mode=mode)
    assert _cos(enc.encode(images), reference) >= threshold


@needs_ort_cuda
@pytest.mark.parametrize('precision,threshold', [('fp32', 0.9999), ('fp16', 0.999)])
def test_onnxruntime_cuda(images, reference, precision, threshold):
    from boq_vpr.backends.onnxruntime_backend import OnnxRuntimeBackend
    enc = Encoder(MODEL, backend='onnxruntime', device='cuda', precision=precision)
    assert isinstance(enc.backend, OnnxRuntimeBackend)
    assert 'CUDAExecutionProvider' in enc.backend.providers and enc.backend.spec.precision == precision
    assert _cos(enc.encode(images), reference) >= threshold


@needs_trt
def test_tensorrt_parser_accepts_every_exported_graph(tmp_path):
    """The real parser agrees with boq_vpr.backends.trt_supported_ops for the graphs of test_trt_ops."""
    import tensorrt as trt
    from test_trt_ops import CASES, export_options
    from boq_vpr.export import export_onnx
    logger = trt.Logger(trt.Logger.WARNING)
    for i, (config, dynamic_size, attention) in enumerate(CASES):
        path = tmp_path / f'{i}.onnx'
        export_onnx(config, path, **export_options(dynamic_size, attention))
        network = trt.Builder(logger).create_network(0)
        parser = trt.OnnxParser(network, logger)
        ok = parser.parse_from_file(str(path))
        errors = [str(parser.get_error(j)) for j in range(parser.num_errors)]
        assert ok, f'{config.name} dynamic={dynamic_size} attention={attention}: {errors}'


@needs_trt
@pytest.mark.parametrize('precision,threshold', [('fp32', 0.9999), ('fp16', 0.999)])
def test_tensorrt_engine_parity_and_cache(images, reference, precision, threshold, tmp_path, caplog):
    from boq_vpr.backends.tensorrt_backend import TensorRTBackend
    options = dict(precision=precision, engine_cache_dir=tmp_path, max_batch=8)
    with caplog.at_level(logging.INFO):
        enc = Encoder(MODEL, backend='tensorrt', device='cuda', batch_size=8, **options)
    assert 'building engine' in caplog.text and 'TensorRT tensor images' in caplog.text
    assert _cos(enc.encode(images), reference) >= threshold
    with pytest.raises(ImageError, match=r'expected input \[N, 3, 160, 160\]'):
        enc.backend.infer(torch.zeros(1, 3, 96, 96))
    assert isinstance(enc.backend, TensorRTBackend)
    engine = enc.backend.engine_path
    assert engine.is_file() and engine.with_suffix('.engine.json').is_file()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        again = Encoder(MODEL, backend='tensorrt', device='cuda', **options)
    assert isinstance(again.backend, TensorRTBackend)
    assert 'loading cached engine' in caplog.text and again.backend.engine_path == engine
    # an engine whose key names another TensorRT version is rebuilt, with the reason logged
    key = engine.with_suffix('.engine.json')
    key.write_text(key.read_text().replace('"tensorrt": "', '"tensorrt": "9.9.9-'))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        Encoder(MODEL, backend='tensorrt', device='cuda', **options)
    assert 'does not fit' in caplog.text and 'tensorrt' in caplog.text


@needs_trt
def test_tensorrt_int8_calibrated(images, reference, calibration_dir, tmp_path):
    enc = Encoder(MODEL, backend='tensorrt', device='cuda', precision='int8', engine_cache_dir=tmp_path,
                  calibration=calibration_dir)
    cos = _cos(enc.encode(images), reference)
    assert cos >= 0.99, f'INT8 engine min cosine {cos:.5f}'


@needs_trt
def test_corrupt_engine_is_refused(tmp_path):
    from boq_vpr.backends.tensorrt_backend import load_engine
    bad = tmp_path / 'bad.engine'
    bad.write_bytes(b'not an engine' * 100)
    with pytest.raises(ExportError, match='bad.engine'):
        load_engine(bad.read_bytes(), str(bad))


@needs_trt
def test_explicit_engine_path_without_key_is_rebuilt(tmp_path, caplog):
    engine = tmp_path / 'mine.engine'
    engine.write_bytes(b'foreign engine bytes')
    with caplog.at_level(logging.WARNING):
        enc = Encoder(MODEL, backend='tensorrt', device='cuda', precision='fp16', engine_path=engine)
    assert 'foreign engine' in caplog.text
    assert enc.encode(np.zeros((32, 64, 3), np.uint8)).shape == (1, get_config(MODEL).descriptor_dim)


@needs_trt
def test_tensorrt_int8_engine_key_follows_the_calibration_set(calibration_dir, tmp_path, caplog):
    """Another calibration folder is another engine (the key holds the calibration digest), not the old one."""
    import shutil
    from boq_vpr.backends.tensorrt_backend import TensorRTBackend
    from boq_vpr.inputs.images import list_images
    other = tmp_path / 'other'
    other.mkdir()
    for p in list_images(calibration_dir)[:16]:
        shutil.copy(p, other / p.name)
    options = dict(backend='tensorrt', device='cuda', precision='int8', engine_cache_dir=tmp_path / 'engines')
    first = Encoder(MODEL, calibration=calibration_dir, **options)
    with caplog.at_level(logging.WARNING):
        second = Encoder(MODEL, calibration=other, **options)
    assert isinstance(first.backend, TensorRTBackend) and isinstance(second.backend, TensorRTBackend)
    assert first.backend.engine_path != second.backend.engine_path and 'building engine' in caplog.text
