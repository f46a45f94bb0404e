"""Preprocessing parity with the official torchvision transform, and input validation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from boq_vpr.errors import ImageError
from boq_vpr.inputs.images import list_images, load_image
from boq_vpr.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessor, target_size

# Measured max absolute difference against torchvision: 0 (same kernel); the bound leaves room
# for float reordering on other CPUs.
TOLERANCE = 1e-5


def official_transform(size):
    return T.Compose([T.ToTensor(),
                      T.Resize(size, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
                      T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])


def _images(heldout_dir):
    real = [load_image(p) for p in list_images(heldout_dir / 'summer')[:3]]
    rng = np.random.default_rng(0)
    camera = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
              rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)]
    return real + camera


@pytest.mark.parametrize('size', [(384, 384), (322, 322), (224, 308)])
def test_matches_torchvision(heldout_dir, size):
    pre = Preprocessor(size)
    ref = official_transform(size)
    for img in _images(heldout_dir):
        ours = pre.to_tensor(img)[0]
        theirs = ref(Image.fromarray(img))
        assert ours.shape == theirs.shape == (3, *size)
        assert (ours - theirs).abs().max().item() < TOLERANCE


def test_batch_equals_single():
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(3)]
    pre = Preprocessor((32, 48))
    batch = pre.batch(imgs)
    assert batch.shape == (3, 3, 32, 48) and batch.dtype == torch.float32
    assert torch.equal(batch[1], pre.to_tensor(imgs[1])[0])


def test_keep_aspect_mode():
    assert target_size(480, 640, (322, 322), 'keep_aspect', 14) == (322, 434)
    assert target_size(480, 640, (384, 384), 'keep_aspect', 1) == (384, 512)
    pre = Preprocessor((322, 322), 'keep_aspect', 14)
    out = pre.to_tensor(np.zeros((480, 640, 3), np.uint8))
    assert out.shape == (1, 3, 322, 434)
    with pytest.raises(ImageError, match='different input sizes'):
        pre.batch([np.zeros((480, 640, 3), np.uint8), np.zeros((480, 480, 3), np.uint8)])


def test_float_input_in_unit_range_matches_uint8():
    img = np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    pre = Preprocessor((32, 32))
    assert torch.allclose(pre.to_tensor(img), pre.to_tensor(img.astype(np.float32) / 255.0), atol=1e-6)


@pytest.mark.parametrize('bad, message', [
    (np.zeros((10, 10, 3), np.int32), 'unsupported dtype int32'),
    (np.zeros((10, 10, 4), np.uint8), r'expected shape H x W x 3'),
    (np.zeros((10, 10), np.uint8), r'expected shape H x W x 3'),
    (np.zeros((0, 10, 3), np.uint8), 'empty image'),
    (np.full((10, 10, 3), np.nan, np.float32), 'NaN'),
    (np.full((10, 10, 3), 2.0, np.float32), r'must lie in \[0, 1\]'),
    ([[1, 2, 3]], 'expected a numpy array'),
])
def test_bad_arrays_raise_clear_errors(bad, message):
    with pytest.raises(ImageError, match=message):
        Preprocessor((32, 32)).to_tensor(bad)


def test_unknown_resize_mode():
    with pytest.raises(ImageError, match='fixed, keep_aspect'):
        Preprocessor((32, 32), mode='crop')
