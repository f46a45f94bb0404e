"""The TensorRT build logic and engine key without TensorRT.

``build_engine`` against a recording stand-in of the ``tensorrt`` module (which calls it makes, with
which shapes and flags), the engine key's fields, and what a stubs-only ``tensorrt`` folder does.
The real API names are checked by ``test_trt_static.py`` (mypy against tensorrt-stubs); the real
build runs in ``test_gpu.py`` on a GPU.
"""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from boq_vpr.backends import tensorrt_backend as tb
from boq_vpr.backends.capabilities import has_module
from boq_vpr.backends.engine_cache import EngineKey, read_engine_key, write_engine
from boq_vpr.errors import BackendError


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []


def _fake_tensorrt(rec: _Recorder, layer_types: list[str]) -> types.ModuleType:
    trt = types.ModuleType('tensorrt')
    trt.__version__ = '10.13.0.35'
    trt.float32 = 'float32'

    class Enum:
        def __init__(self, names):
            for n in names:
                setattr(self, n, n)
    trt.BuilderFlag = Enum(['FP16', 'INT8', 'PREFER_PRECISION_CONSTRAINTS'])
    trt.MemoryPoolType = Enum(['WORKSPACE'])
    trt.LayerType = Enum(['NORMALIZATION', 'REDUCE', 'SOFTMAX', 'CONVOLUTION', 'MATRIX_MULTIPLY'])
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.Dims = lambda shape: tuple(shape)

    class ILogger:
        Severity = Enum(['INTERNAL_ERROR', 'ERROR', 'WARNING', 'INFO', 'VERBOSE'])

        def __init__(self):
            pass
    trt.ILogger = ILogger

    class IInt8EntropyCalibrator2:
        def __init__(self):
            pass
    trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2

    class Layer:
        def __init__(self, kind):
            self.type = kind
            self.precision = None

    class Network:
        def __init__(self):
            self.layers = [Layer(k) for k in layer_types]
            self.num_layers = len(self.layers)

        def get_layer(self, i):
            return self.layers[i]

    class Profile:
        def __init__(self, name):
            self.name = name
            self.shapes = None

        def set_shape(self, name, mn, opt, mx):
            self.shapes = (name, mn, opt, mx)

    class TimingCache:
        def serialize(self):
            return b'timing'

    class Config:
        def __init__(self):
            self.flags = []
            self.profiles = []
            self.calibration_profile = None
            self.int8_calibrator = None

        def set_memory_pool_limit(self, pool, size):
            rec.calls.append(('workspace', pool, size))

        def create_timing_cache(self, blob):
            return TimingCache()

        def set_timing_cache(self, cache, ignore_mismatch):
            return True

        def get_timing_cache(self):
            return TimingCache()

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def set_flag(self, flag):
            self.flags.append(flag)

        def set_calibration_profile(self, profile):
            self.calibration_profile = profile
            return True

    class Builder:
        def __init__(self, logger):
            self.n_profiles = 0

        def create_network(self, flags):
            rec.calls.append(('network_flags', flags))
            rec.network = Network()
            return rec.network

        def create_builder_config(self):
            rec.config = Config()
            return rec.config

        def create_optimization_profile(self):
            self.n_profiles += 1
            return Profile(self.n_profiles)

        def build_serialized_network(self, network, config):
            rec.calls.append(('build',))
            return b'engine-bytes'
    trt.Builder = Builder

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            rec.calls.append(('parse', path))
            return True
    trt.OnnxParser = OnnxParser
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    rec = _Recorder()
    monkeypatch.setitem(sys.modules, 'tensorrt', _fake_tensorrt(rec, ['CONVOLUTION', 'NORMALIZATION', 'SOFTMAX',
                                                                      'MATRIX_MULTIPLY', 'REDUCE']))
    return rec


SHAPES = ((1, 3, 32, 32), (1, 3, 32, 32), (8, 3, 32, 32))


def test_int8_calibrates_at_a_profile_of_exactly_the_calibration_batch(fake_trt, tmp_path):
    batches = [np.zeros((8, 3, 32, 32), np.float32)] * 3
    data = tb.build_engine(tmp_path / 'm.onnx', 'int8', SHAPES, calibration_batches=batches,
                           calibration_cache=tmp_path / 'c.calib', device=torch.device('cpu'), workspace=123)
    assert data == b'engine-bytes'
    config = fake_trt.config
    assert [p.shapes for p in config.profiles] == [('images', *SHAPES)]          # inference: batch 1..8, opt 1
    cal = config.calibration_profile
    assert cal is not None and cal not in config.profiles
    assert cal.shapes == ('images', (8, 3, 32, 32), (8, 3, 32, 32), (8, 3, 32, 32))
    assert {'INT8', 'FP16', 'PREFER_PRECISION_CONSTRAINTS'} <= set(config.flags)
    assert config.int8_calibrator.get_batch_size() == 8
    assert ('workspace', 'WORKSPACE', 123) in fake_trt.calls and ('network_flags', 0) in fake_trt.calls
    kept = {layer.type for layer in fake_trt.network.layers if layer.precision == 'float32'}
    assert kept == {'NORMALIZATION', 'SOFTMAX', 'REDUCE'}


def test_int8_refuses_calibration_batches_that_do_not_fit(fake_trt, tmp_path):
    with pytest.raises(BackendError, match='all have the shape'):
        tb.build_engine(tmp_path / 'm.onnx', 'int8', SHAPES, device=torch.device('cpu'),
                        calibration_batches=[np.zeros((8, 3, 32, 32), np.float32),
                                             np.zeros((4, 3, 32, 32), np.float32)])
    with pytest.raises(BackendError, match='does not fit the engine profile'):
        tb.build_engine(tmp_path / 'm.onnx', 'int8', SHAPES, device=torch.device('cpu'),
                        calibration_batches=[np.zeros((16, 3, 32, 32), np.float32)])


def test_fp32_and_strongly_typed_builds_set_no_precision_flags(fake_trt, tmp_path):
    tb.build_engine(tmp_path / 'm.onnx', 'fp32', SHAPES)
    assert fake_trt.config.flags == [] and fake_trt.config.calibration_profile is None
    tb.build_engine(tmp_path / 'm.onnx', 'fp16', SHAPES, strongly_typed=True)
    assert fake_trt.config.flags == [] and ('network_flags', 1 << 1) in fake_trt.calls


def test_precision_constraints_are_named_in_the_key():
    assert tb.precision_constraints('fp16', False) == 'prefer:NORMALIZATION,REDUCE,SOFTMAX=fp32'
    assert tb.precision_constraints('int8', False) == tb.precision_constraints('fp16', False)
    assert tb.precision_constraints('fp32', False) == '' and tb.precision_constraints('fp16', True) == ''


def _images(folder: Path, n: int, size: int = 100) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f'{i:03d}.png').write_bytes(b'x' * (size + i))
    return folder


def test_calibration_digest_follows_the_images_and_settings(tmp_path):
    a = tb.calibration_digest(_images(tmp_path / 'a', 10))
    assert a == tb.calibration_digest(_images(tmp_path / 'same', 10))
    assert a != tb.calibration_digest(_images(tmp_path / 'more', 11))
    assert a != tb.calibration_digest(tmp_path / 'a', max_images=64)
    assert a != tb.calibration_digest(tmp_path / 'a', batch_size=4)


def _key(**over) -> EngineKey:
    fields = dict(onnx_sha256='abc', tensorrt='10.13.0.35', gpu='NVIDIA H200 sm_90', precision='int8',
                  min_shape=(1, 3, 32, 32), opt_shape=(1, 3, 32, 32), max_shape=(8, 3, 32, 32),
                  workspace_bytes=2 << 30, strongly_typed=False,
                  precision_constraints='prefer:NORMALIZATION,REDUCE,SOFTMAX=fp32', calibration='d1')
    fields.update(over)
    return EngineKey(**fields)


def test_engine_key_holds_calibration_and_builder_settings(tmp_path):
    base = _key()
    for change in ({'calibration': 'd2'}, {'workspace_bytes': 1 << 30}, {'strongly_typed': True},
                   {'precision_constraints': ''}):
        other = _key(**change)
        assert other != base and other.file_name('m') != base.file_name('m')
        assert [m.split(':')[0] for m in base.mismatches(other)] == list(change)
    engine = tmp_path / base.file_name('m')
    write_engine(engine, b'data', base)
    assert read_engine_key(engine) == base


def test_a_key_from_before_the_new_fields_does_not_fit_and_says_why(tmp_path):
    old = {k: v for k, v in _key().to_json().items()
           if k not in ('workspace_bytes', 'strongly_typed', 'precision_constraints', 'calibration')}
    engine = tmp_path / 'old.engine'
    engine.write_bytes(b'data')
    engine.with_suffix('.engine.json').write_text(json.dumps(old))
    found = read_engine_key(engine)
    assert found is not None and found != _key()
    reasons = _key().mismatches(found)
    assert len(reasons) == 4 and all('key written before this field existed' in r for r in reasons)


def test_a_stubs_only_tensorrt_folder_is_not_tensorrt(tmp_path, monkeypatch):
    """A stubs-only tensorrt folder reads as 'not installed'.

    tensorrt-stubs installed into site-packages leaves tensorrt/__init__.pyi: it imports as an empty
    namespace package, which must read as 'not installed', not crash on a missing __version__.
    """
    if has_module('tensorrt'):
        pytest.skip('TensorRT is installed here: a stubs-only folder would not be the one imported')
    (tmp_path / 'tensorrt').mkdir()
    (tmp_path / 'tensorrt' / '__init__.pyi').write_text("__version__: str = '10.13.0.35'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, 'tensorrt', raising=False)
    import importlib.util
    assert importlib.util.find_spec('tensorrt') is not None      # it does import ...
    assert not has_module('tensorrt')                             # ... but is not counted as installed
    with pytest.raises(BackendError, match='type stubs only'):
        tb.import_tensorrt()
