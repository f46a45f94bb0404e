"""Image conversion: raw buffers with ROS encodings, encoded bytes, files."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from boq_vpr.errors import ImageError
from boq_vpr.inputs.images import decode_to_rgb8, load_image, raw_to_rgb8

RGB = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)


def _raw(arr: np.ndarray, pad: int = 0) -> tuple[bytes, int]:
    rows = arr.reshape(arr.shape[0], -1).view(np.uint8)
    if pad:
        rows = np.concatenate([rows, np.zeros((rows.shape[0], pad), np.uint8)], axis=1)
    return rows.tobytes(), rows.shape[1]


@pytest.mark.parametrize('encoding, make', [
    ('rgb8', lambda a: a),
    ('bgr8', lambda a: a[:, :, ::-1].copy()),
    ('rgba8', lambda a: np.dstack([a, np.full(a.shape[:2], 255, np.uint8)])),
    ('bgra8', lambda a: np.dstack([a[:, :, ::-1], np.full(a.shape[:2], 7, np.uint8)])),
])
def test_color_encodings_roundtrip(encoding, make):
    data, step = _raw(make(RGB), pad=3)  # padded rows: step > width * channels
    out = raw_to_rgb8(data, 6, 8, encoding, step)
    assert out.dtype == np.uint8 and np.array_equal(out, RGB)


def test_mono_encodings():
    gray = RGB[:, :, 0].copy()
    out = raw_to_rgb8(*_raw(gray)[:1], 6, 8, 'mono8', 8)
    assert np.array_equal(out[:, :, 1], gray)
    g16 = gray.astype(np.uint16) * 16
    out16 = raw_to_rgb8(g16.tobytes(), 6, 8, 'mono16', 16)
    assert out16.shape == (6, 8, 3) and out16.max() == 255
    big = raw_to_rgb8(g16.byteswap().tobytes(), 6, 8, 'mono16', 16, is_bigendian=True)
    assert np.array_equal(big, out16)


def test_bayer_encoding_gives_rgb():
    bayer = np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8)
    out = raw_to_rgb8(bayer.tobytes(), 8, 8, 'bayer_rggb8', 8)
    assert out.shape == (8, 8, 3)


@pytest.mark.parametrize('kwargs, message', [
    ({'encoding': 'yuv422_weird'}, 'unsupported encoding'),
    ({'step': 10}, 'step 10 is smaller than a row'),
    ({'data': b'\x00' * 20}, 'data has 20 bytes'),
    ({'height': 0}, 'empty image'),
])
def test_malformed_raw_images(kwargs, message):
    args = {'data': RGB.tobytes(), 'height': 6, 'width': 8, 'encoding': 'rgb8', 'step': 24, **kwargs}
    with pytest.raises(ImageError, match=message):
        raw_to_rgb8(**args)


def test_decode_png_and_jpeg():
    ok, png = cv2.imencode('.png', RGB[:, :, ::-1])
    assert np.array_equal(decode_to_rgb8(png.tobytes()), RGB)
    ok, jpg = cv2.imencode('.jpg', RGB[:, :, ::-1])
    assert decode_to_rgb8(jpg.tobytes()).shape == RGB.shape
    with pytest.raises(ImageError, match='cannot be decoded'):
        decode_to_rgb8(jpg.tobytes()[:20])
    with pytest.raises(ImageError, match='no data'):
        decode_to_rgb8(b'')


def test_load_image_names_the_file(tmp_path):
    bad = tmp_path / 'broken.png'
    bad.write_bytes(b'not an image')
    with pytest.raises(ImageError, match='broken.png'):
        load_image(bad)
    cv2.imwrite(str(tmp_path / 'g.png'), RGB[:, :, 0])
    assert load_image(tmp_path / 'g.png').shape == (6, 8, 3)
