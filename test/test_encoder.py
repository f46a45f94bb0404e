"""Encoder properties: shape, dtype, unit norm, batching, fingerprints, backend registry."""
from __future__ import annotations

import numpy as np
import pytest

from boq_vpr.backends import backend_names, make_backend
from boq_vpr.encoder import Encoder
from boq_vpr.errors import BackendError, ConfigError, ImageError
from boq_vpr.inputs.images import list_images, load_image
from boq_vpr.models import get_config


@pytest.fixture(scope='module')
def encoder():
    return Encoder('resnet18_1024', backend='torch', device='cpu', batch_size=3)


def test_shape_dtype_norm(encoder, heldout_dir):
    imgs = [load_image(p) for p in list_images(heldout_dir / 'summer')[:5]]
    desc = encoder.encode(imgs)
    assert desc.shape == (5, 1024) and desc.dtype == np.float32
    assert np.allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-5)
    assert encoder.times.images >= 5


def test_batch_equals_single(encoder, heldout_dir):
    imgs = [load_image(p) for p in list_images(heldout_dir / 'winter')[:4]]
    batched = encoder.encode(imgs)
    single = np.concatenate([encoder.encode(im) for im in imgs])
    assert np.abs(batched - single).max() < 1e-5
    streamed = np.concatenate(list(encoder.encode_iter(iter(imgs))))
    assert np.abs(batched - streamed).max() < 1e-5


def test_different_places_differ(encoder, heldout_dir):
    files = list_images(heldout_dir / 'summer')
    desc = encoder.encode([load_image(files[0]), load_image(files[1000])])
    assert float(desc[0] @ desc[1]) < 0.9999


def test_fingerprint_depends_on_config_and_weights(encoder):
    same = Encoder('resnet18_1024', backend='torch', device='cpu')
    other = Encoder('resnet18_1024', backend='torch', device='cpu', image_size=(128, 128))
    assert encoder.fingerprint == same.fingerprint != other.fingerprint


def test_empty_and_bad_input(encoder):
    assert encoder.encode([]).shape == (0, 1024)
    with pytest.raises(ImageError):
        encoder.encode([np.zeros((8, 8, 3), np.float64) + np.nan])


def test_backend_registry():
    assert 'auto' in backend_names() and 'torch' in backend_names()
    with pytest.raises(ValueError, match='valid: auto'):
        make_backend('tensorflow', get_config('resnet18_1024'))
    with pytest.raises(ConfigError):
        Encoder('resnet18_1024', backend='nope')


def test_auto_picks_an_available_backend():
    enc = Encoder('resnet18_1024', backend='auto', device='cpu')
    assert enc.backend.name in backend_names()
    assert enc.encode(np.zeros((32, 64, 3), np.uint8)).shape == (1, 1024)


def test_cuda_requested_without_cuda_is_a_clear_error():
    import torch
    if torch.cuda.is_available():
        pytest.skip('CUDA is available here')
    with pytest.raises(BackendError, match='CUDA is not available'):
        Encoder('resnet18_1024', backend='torch', device='cuda')


@pytest.mark.parametrize('mode', ['graph', 'eager'])
def test_attention_comes_from_the_same_pass_as_the_descriptor(heldout_dir, mode):
    """An attention frame runs the same plain-op graph as the other frames (bf16/fp16 where chosen).

    Not the eager FP32 model: the descriptor of an attention frame is the one ``encode`` gives
    (same graph, precision and layout), and the maps match the eager model's.
    """
    from boq_vpr.backends.capabilities import cpu_supports_bf16
    precision = 'bf16' if cpu_supports_bf16() else 'fp32'
    enc = Encoder('resnet18_1024', backend='torch', device='cpu', image_size=(96, 128), precision=precision, mode=mode)
    img = load_image(list_images(heldout_dir / 'summer')[0])
    desc, attn, grid = enc.encode_with_attention(img)
    batch = enc.preprocessor.batch([img])
    d, attns = enc.backend.attention(batch)   # the backend-level call the node used so far
    if mode == 'graph':   # the node's path: bitwise the descriptor of encode
        np.testing.assert_array_equal(desc, enc.encode(img)[0])
        np.testing.assert_array_equal(d, enc.backend.infer(batch))
    else:   # eager attention takes MultiheadAttention's unfused path (need_weights): same precision
        assert float(desc @ enc.encode(img)[0]) >= (0.999 if precision == 'bf16' else 0.99999)
    assert grid == enc.backend.model.feature_shape(96, 128)
    assert attn.shape == (enc.config.num_layers, enc.config.num_queries, grid[0] * grid[1])
    np.testing.assert_allclose(attn.sum(-1), 1.0, atol=1e-2)
    eager = Encoder('resnet18_1024', backend='torch', device='cpu', image_size=(96, 128), precision='fp32',
                    mode='eager')
    ref = enc.backend.model(batch, return_attention=True)[1]
    np.testing.assert_allclose(attn, np.stack([a[0].detach().numpy() for a in ref]),
                               atol=2e-2 if precision == 'bf16' else 1e-4)
    assert eager.supports_attention


def test_attention_on_onnxruntime_needs_the_attention_export(tmp_path, monkeypatch, heldout_dir):
    monkeypatch.setenv('BOQ_VPR_CACHE', str(tmp_path))
    img = load_image(list_images(heldout_dir / 'summer')[0])
    plain = Encoder('resnet18_1024', backend='onnxruntime', device='cpu', precision='fp32', image_size=(64, 64))
    assert not plain.supports_attention
    with pytest.raises(BackendError, match='attention'):
        plain.encode_with_attention(img)
    enc = Encoder('resnet18_1024', backend='onnxruntime', device='cpu', precision='fp32', image_size=(64, 64),
                  attention=True)
    desc, attn, grid = enc.encode_with_attention(img)
    np.testing.assert_allclose(desc, enc.encode(img)[0], atol=1e-6)
    np.testing.assert_allclose(desc, plain.encode(img)[0], atol=1e-5)
    assert attn.shape == (enc.config.num_layers, enc.config.num_queries, grid[0] * grid[1])
    ref = Encoder('resnet18_1024', backend='torch', device='cpu', precision='fp32', image_size=(64, 64))
    np.testing.assert_allclose(attn, ref.encode_with_attention(img)[1], atol=1e-4)
