"""Backends behind the encoder interface.

Parity with eager PyTorch on real images, precision choice, auto selection, caches, and clear
errors for missing runtimes and bad input.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from boq_vpr.backends import AUTO_ORDER, auto_candidates, make_backend
from boq_vpr.backends.capabilities import cpu_supports_bf16, has_module, physical_cores
from boq_vpr.backends.engine_cache import EngineKey, cached_onnx, read_engine_key, write_engine
from boq_vpr.commands.verify import compare, parse_backend_spec
from boq_vpr.encoder import Encoder
from boq_vpr.errors import BackendError, ConfigError, ExportError, ImageError
from boq_vpr.inputs.images import list_images, load_image
from boq_vpr.models import get_config

MODEL = 'resnet18_1024'
needs_openvino = pytest.mark.skipif(not has_module('openvino'), reason='openvino not installed (extra "openvino")')


@pytest.fixture(scope='module', autouse=True)
def cache(tmp_path_factory):
    """Give the exports made by the backends in this module a private cache folder."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp('cache')
    mp.setenv('BOQ_VPR_CACHE', str(path))
    yield path
    mp.undo()


@pytest.fixture(scope='module')
def images(heldout_dir):
    files = list_images(heldout_dir / 'summer')
    return [load_image(files[i]) for i in range(0, 1176, 118)]


@pytest.fixture(scope='module')
def reference(images):
    enc = Encoder(MODEL, backend='torch', device='cpu', precision='fp32', mode='eager')
    return enc.encode(images)


def encode(images, backend, precision, **options):
    enc = Encoder(MODEL, backend=backend, device='cpu', precision=precision, **options)
    return enc, enc.encode(images)


@pytest.mark.parametrize('backend,precision,threshold', [
    ('torch', 'fp32', 0.9999), ('onnxruntime', 'fp32', 0.9999),
    pytest.param('openvino', 'fp32', 0.9999, marks=needs_openvino),
    pytest.param('torch', 'bf16', 0.999, marks=pytest.mark.skipif(not cpu_supports_bf16(), reason='no native bf16')),
    pytest.param('openvino', 'bf16', 0.999, marks=[needs_openvino, pytest.mark.skipif(
        not cpu_supports_bf16(), reason='no native bf16 on this CPU')]),
])
def test_backend_parity_on_real_images(images, reference, backend, precision, threshold):
    enc, desc = encode(images, backend, precision)
    assert enc.backend.name == backend and enc.backend.precision == precision
    assert desc.shape == reference.shape and desc.dtype == np.float32
    cos = (desc * reference).sum(1)
    assert cos.min() >= threshold, f'{backend}/{precision}: min cosine {cos.min():.6f}'
    assert enc.backend.describe()['backend'] == backend


def test_onnxruntime_int8_calibrated(images, reference, nordland_dir):
    enc, desc = encode(images, 'onnxruntime', 'int8', calibration=nordland_dir / 'winter')
    assert enc.backend.precision == 'int8' and 'int8' in str(enc.backend.onnx_path)
    assert (desc * reference).sum(1).min() >= 0.999
    # uint8 weights (U8U8): int8 weights (U8S8) saturate in ONNX Runtime's and OpenVINO's kernels on x86
    # without VNNI (min cosine about 0.91 there), a failure the accuracy check above only sees on such CPUs
    import onnx
    graph = onnx.load(str(enc.backend.onnx_path)).graph
    quantized = [i for i in graph.initializer if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)]
    assert quantized and all(i.data_type == onnx.TensorProto.UINT8 for i in quantized)
    with pytest.raises(BackendError, match='calibration'):
        Encoder(MODEL, backend='onnxruntime', device='cpu', precision='int8')


def test_wrong_input_size_names_expected_shape():
    backend = make_backend('onnxruntime', get_config(MODEL), device='cpu', precision='fp32')
    with pytest.raises(ImageError, match=r'expected input \[N, 3, 160, 160\]'):
        backend.infer(torch.zeros(1, 3, 128, 160))
    with pytest.raises(ImageError, match=r'\[N, 3, H, W\]'):
        backend.infer(torch.zeros(3, 160, 160))


def test_onnx_of_another_model_is_refused():
    other = cached_onnx(get_config(MODEL).with_image_size(96, 96), None)
    with pytest.raises(ExportError, match='fixed to input 96x96'):
        make_backend('onnxruntime', get_config(MODEL), onnx_path=other, device='cpu')
    with pytest.raises(ExportError, match='not found'):
        make_backend('onnxruntime', get_config(MODEL), onnx_path='/nonexistent/model.onnx', device='cpu')


def test_unsupported_precision_and_missing_runtimes_are_clear_errors():
    config = get_config(MODEL)
    with pytest.raises(BackendError, match='bf16 on CPU: openvino or torch'):
        make_backend('onnxruntime', config, device='cpu', precision='bf16')
    import onnxruntime
    if 'CUDAExecutionProvider' not in onnxruntime.get_available_providers():
        with pytest.raises(BackendError, match='onnxruntime-gpu'):
            make_backend('onnxruntime', config, device='cuda')
    if not has_module('tensorrt'):
        with pytest.raises(BackendError, match='TensorRT is not installed'):
            make_backend('tensorrt', config)
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match='CUDA is not available'):
            make_backend('torch', config, device='cuda')
    with pytest.raises(BackendError, match='mode'):
        make_backend('torch', config, device='cpu', mode='jit')


def test_auto_logs_choice_and_fallbacks(caplog):
    with caplog.at_level(logging.INFO, logger='boq_vpr.backends'):
        enc = Encoder(MODEL, backend='auto', device='cpu')
    chosen = [r.getMessage() for r in caplog.records if 'backend auto ->' in r.getMessage()]
    assert chosen, 'auto must log its choice'
    if cpu_supports_bf16():
        assert enc.backend.precision == 'bf16'  # the reduced-precision path is chosen automatically
        assert enc.backend.name == ('openvino' if has_module('openvino') else 'torch')
    else:
        assert enc.backend.precision == 'fp32' and enc.backend.name == 'onnxruntime'
    if not torch.cuda.is_available():
        with caplog.at_level(logging.INFO, logger='boq_vpr.backends'):
            enc = Encoder(MODEL, backend='auto')  # device auto: GPU candidates skipped, the reason logged
        assert enc.backend.device == 'cpu'
        assert 'tensorrt:cuda: no CUDA GPU' in caplog.text


def test_auto_order():
    assert AUTO_ORDER[0] == 'tensorrt:cuda'
    both = auto_candidates('auto', 'fp32')
    assert [d for _, d in both] == sorted([d for _, d in both], key=lambda d: d != 'cuda')  # GPU first
    assert all(d == 'cpu' for _, d in auto_candidates('cpu', 'fp32'))
    assert auto_candidates('cpu', 'fp32')[0] == ('onnxruntime', 'cpu')
    assert auto_candidates('cuda:1', 'fp16')[0] == ('tensorrt', 'cuda:1')
    if cpu_supports_bf16():
        assert auto_candidates('cpu', 'auto')[0] == ('openvino', 'cpu')


def test_engine_key_and_cache_files(tmp_path):
    key = EngineKey('ab' * 32, '10.9.0', 'NVIDIA H100 sm_90', 'fp16', (1, 3, 384, 384), (1, 3, 384, 384),
                    (8, 3, 384, 384))
    engine = tmp_path / key.file_name('resnet50')
    assert 'fp16' in engine.name and 'nvidia-h100-sm-90' in engine.name and 'trt10.9.0' in engine.name
    write_engine(engine, b'engine-bytes', key)
    assert engine.read_bytes() == b'engine-bytes' and read_engine_key(engine) == key
    other = EngineKey(key.onnx_sha256, '10.3.0', 'Orin sm_87', 'fp16', key.min_shape, key.opt_shape, key.max_shape)
    problems = key.mismatches(other)
    assert len(problems) == 2 and any('tensorrt' in p and '10.3.0' in p for p in problems)
    assert read_engine_key(tmp_path / 'none.engine') is None
    assert json.loads((tmp_path / (engine.name + '.json')).read_text())['gpu'] == 'NVIDIA H100 sm_90'


def test_capabilities():
    assert physical_cores() >= 1
    assert isinstance(cpu_supports_bf16(), bool)


def test_verify_compare_and_specs():
    rng = np.random.default_rng(0)
    db = rng.normal(size=(20, 16)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    q = db[:10] + 0.01 * rng.normal(size=(10, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    same = compare((db, q), (db, q))
    assert same['cosine_min'] == pytest.approx(1.0, abs=1e-6) and same['top1_agreement'] == 1.0
    shuffled = compare((db, q), (db, q[::-1].copy()))
    assert shuffled['top1_agreement'] < 0.5 and shuffled['cosine_min'] < 0.9
    assert len(shuffled['disagreements']) == round(10 * (1 - shuffled['top1_agreement']))
    assert all(d['reference_score_gap'] > 1e-6 for d in shuffled['disagreements'])
    # a duplicated database image: choosing the twin is a tie, not a disagreement
    eye = np.eye(4, dtype=np.float32)
    twin_db, query = np.stack([eye[0], eye[1], eye[2], eye[0]]), eye[:1]
    moved = (eye[0] + 0.1 * eye[1]) / np.linalg.norm(eye[0] + 0.1 * eye[1])
    tie = compare((twin_db, query), (np.stack([moved, eye[1], eye[2], eye[0]]), query))
    assert tie['top1_identical'] == 0.0 and tie['top1_agreement'] == 1.0
    assert parse_backend_spec('openvino:bf16') == ('openvino', 'bf16')
    assert parse_backend_spec('torch') == ('torch', 'auto')
    with pytest.raises(ConfigError, match='valid'):
        parse_backend_spec('tflite:fp32')
    with pytest.raises(ConfigError, match='precision'):
        parse_backend_spec('torch:fp8')


def test_verify_and_bench_commands(heldout_dir, tmp_path, capsys):
    from boq_vpr.cli import main
    report = tmp_path / 'verify.json'
    rc = main(['verify', '--model', MODEL, '--database', str(heldout_dir / 'summer'),
               '--queries', str(heldout_dir / 'winter'), '--limit', '12', '--backends', 'onnxruntime:fp32',
               'torch:fp32', 'tensorrt:fp16', '--min-top1', '1.0', '--out', str(report)])
    rows = {r['backend']: r for r in json.loads(report.read_text())['verify']}
    assert rows['onnxruntime']['passed'] and rows['onnxruntime']['cosine_min'] >= 0.9999
    assert rows['torch']['top1_agreement'] == 1.0
    if not has_module('tensorrt'):
        assert rc == 1 and 'error' in rows['tensorrt']  # a backend that cannot run fails the check
    out = tmp_path / 'bench.json'
    assert main(['bench', 'encoder', '--models', MODEL, '--image-sizes', '64', '--backends', 'onnxruntime:fp32',
                 '--batch-sizes', '1', '2', '--rounds', '2', '--warmup', '1', '--out', str(out)]) == 0
    rows = json.loads(out.read_text())['results']
    assert [r['variant'] for r in rows if r['batch'] == 1] == ['torch:fp32 (eager)', 'onnxruntime:fp32']
    assert all(r['infer']['p50_ms'] > 0 and r['speedup_vs_eager_fp32'] > 0 and r['cosine_vs_eager_min'] > 0.9999
               for r in rows)
    assert 'x1.00 vs eager' in capsys.readouterr().out


@pytest.mark.parametrize('backend', ['onnxruntime', pytest.param('openvino', marks=needs_openvino)])
def test_keep_aspect_frames_of_another_aspect_on_exported_backends(backend):
    """keep_aspect feeds 64x85 for a 640x480 frame; the exported graph must take it.

    A graph fixed to 64x64 failed every frame after a warm-up at the configured size.
    """
    enc = Encoder(MODEL, backend=backend, device='cpu', precision='fp32', image_size=(64, 64),
                  resize_mode='keep_aspect')
    enc.warmup(480, 640)
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    desc = enc.encode(frame)
    ref = Encoder(MODEL, backend='torch', device='cpu', precision='fp32', image_size=(64, 64),
                  resize_mode='keep_aspect').encode(frame)
    assert desc.shape == (1, 1024)
    assert float((desc * ref).sum()) >= 0.9999


def test_keep_aspect_on_tensorrt_is_refused_at_construction():
    """TensorRT engines have a fixed input size here: keep_aspect is refused before any engine is built."""
    with pytest.raises(ConfigError, match='keep_aspect.*tensorrt|tensorrt.*keep_aspect'):
        Encoder(MODEL, backend='tensorrt', device='cuda', resize_mode='keep_aspect')
    assert 'tensorrt' not in [b for b, _ in auto_candidates('cpu', 'fp32', dynamic_size=True)]
    assert all(b != 'tensorrt' for b, _ in auto_candidates('auto', 'fp32', dynamic_size=True))
