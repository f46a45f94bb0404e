"""Encoder properties: shape, dtype, unit norm, batching, fingerprints, backend registry."""
from __future__ import annotations

import numpy as np
import pytest

from boq_vpr.backends import backend_names, make_backend
from boq_vpr.encoder import Encoder
from boq_vpr.errors import BackendError, ConfigError, ImageError
from boq_vpr.images import list_images, load_image
from boq_vpr.models import get_config


@pytest.fixture(scope='module')
def encoder():
    return Encoder('resnet18_1024', backend='torch', device='cpu', batch_size=3)


def test_shape_dtype_norm(encoder, nordland_dir):
    imgs = [load_image(p) for p in list_images(nordland_dir / 'summer')[:5]]
    desc = encoder.encode(imgs)
    assert desc.shape == (5, 1024) and desc.dtype == np.float32
    assert np.allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-5)
    assert encoder.times.images >= 5


def test_batch_equals_single(encoder, nordland_dir):
    imgs = [load_image(p) for p in list_images(nordland_dir / 'winter')[:4]]
    batched = encoder.encode(imgs)
    single = np.concatenate([encoder.encode(im) for im in imgs])
    assert np.abs(batched - single).max() < 1e-5
    streamed = np.concatenate(list(encoder.encode_iter(iter(imgs))))
    assert np.abs(batched - streamed).max() < 1e-5


def test_different_places_differ(encoder, nordland_dir):
    files = list_images(nordland_dir / 'summer')
    desc = encoder.encode([load_image(files[0]), load_image(files[1500])])
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
