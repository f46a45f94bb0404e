"""Image conversion: files, encoded bytes and raw buffers -> RGB uint8 ``H x W x 3``.

The single conversion step used by the CLI, the node, the replay tool and the evaluator.
ROS message wrappers live with the node; they hand the message fields to ``raw_to_rgb8`` and
``decode_to_rgb8``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from ..errors import ImageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')

# encoding -> (channels, numpy dtype, cv2 conversion to RGB or None)
_ENCODINGS: dict[str, tuple[int, type, int | None]] = {
    'rgb8': (3, np.uint8, None),
    'bgr8': (3, np.uint8, cv2.COLOR_BGR2RGB),
    'rgba8': (4, np.uint8, cv2.COLOR_RGBA2RGB),
    'bgra8': (4, np.uint8, cv2.COLOR_BGRA2RGB),
    'mono8': (1, np.uint8, cv2.COLOR_GRAY2RGB),
    '8uc1': (1, np.uint8, cv2.COLOR_GRAY2RGB),
    '8uc3': (3, np.uint8, cv2.COLOR_BGR2RGB),
    'mono16': (1, np.uint16, cv2.COLOR_GRAY2RGB),
    '16uc1': (1, np.uint16, cv2.COLOR_GRAY2RGB),
    'rgb16': (3, np.uint16, None),
    'bgr16': (3, np.uint16, cv2.COLOR_BGR2RGB),
    'bayer_rggb8': (1, np.uint8, cv2.COLOR_BayerBG2RGB),
    'bayer_bggr8': (1, np.uint8, cv2.COLOR_BayerRG2RGB),
    'bayer_gbrg8': (1, np.uint8, cv2.COLOR_BayerGR2RGB),
    'bayer_grbg8': (1, np.uint8, cv2.COLOR_BayerGB2RGB),
}
SUPPORTED_ENCODINGS = tuple(sorted(_ENCODINGS))


def encoding_layout(encoding: str) -> tuple[int, int] | None:
    """(channels, bytes per channel) of a raw encoding this module converts, or None."""
    entry = _ENCODINGS.get(encoding.lower())
    return None if entry is None else (entry[0], np.dtype(entry[1]).itemsize)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        # 16-bit cameras rarely fill the range: stretch to the image's own maximum.
        peak = int(image.max()) or 1
        return (image.astype(np.float32) * (255.0 / peak)).round().astype(np.uint8)
    raise ImageError(f'unsupported pixel type {image.dtype}')


def raw_to_rgb8(data: bytes | bytearray | memoryview | np.ndarray, height: int, width: int,
                encoding: str, step: int, is_bigendian: bool = False) -> np.ndarray:
    """A raw buffer (sensor_msgs/Image fields) -> RGB uint8. Validates sizes before touching data."""
    enc = encoding.lower()
    if enc not in _ENCODINGS:
        raise ImageError(f'unsupported encoding {encoding!r}; supported: {", ".join(SUPPORTED_ENCODINGS)}')
    channels, dtype, code = _ENCODINGS[enc]
    if height <= 0 or width <= 0:
        raise ImageError(f'empty image {height}x{width}')
    itemsize = np.dtype(dtype).itemsize
    row = width * channels * itemsize
    if step < row:
        raise ImageError(f'step {step} is smaller than a row ({width} px x {channels} ch x {itemsize} B = {row})')
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).ravel()
    if buf.size < step * height:
        raise ImageError(f'data has {buf.size} bytes, expected step x height = {step} x {height} = {step * height}')
    rows = buf[:step * height].reshape(height, step)[:, :row]
    arr = np.ascontiguousarray(rows).view(np.dtype(dtype).newbyteorder('>' if is_bigendian else '<'))
    arr = arr.astype(dtype, copy=False).reshape(height, width, channels) if channels > 1 else \
        arr.astype(dtype, copy=False).reshape(height, width)
    if dtype is np.uint16 and code is not None and channels == 1:
        arr = _to_uint8(arr)
    out = cv2.cvtColor(arr, code) if code is not None else arr
    return np.ascontiguousarray(_to_uint8(out))


# Larger frames are refused before they are decoded or converted: a few-MB PNG can declare a
# 30000 x 30000 image whose decoding and float copies would exhaust a robot computer's memory.
MAX_IMAGE_PIXELS = 64 * 2**20


class ImageTooLarge(ImageError):
    """An image with more than ``MAX_IMAGE_PIXELS`` pixels."""


def check_image_size(width: int, height: int, what: str = 'image') -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageTooLarge(f'{what}: {width}x{height} has {width * height / 1e6:.0f} Mpx, more than the '
                            f'{MAX_IMAGE_PIXELS / 1e6:.0f} Mpx a camera frame can have here')


def _declared_size(buf: np.ndarray) -> tuple[int, int] | None:
    """(width, height) read from a PNG or JPEG header without decoding; None for other formats."""
    head = buf[:2].tobytes()
    if buf[:8].tobytes() == b'\x89PNG\r\n\x1a\n' and buf.size >= 24:
        return int.from_bytes(buf[16:20].tobytes(), 'big'), int.from_bytes(buf[20:24].tobytes(), 'big')
    if head == b'\xff\xd8':
        i = 2
        while i + 9 < buf.size and buf[i] == 0xFF:
            marker, length = int(buf[i + 1]), int.from_bytes(buf[i + 2:i + 4].tobytes(), 'big')
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):   # start of frame
                return (int.from_bytes(buf[i + 7:i + 9].tobytes(), 'big'),
                        int.from_bytes(buf[i + 5:i + 7].tobytes(), 'big'))
            i += 2 + length
    return None


def decode_to_rgb8(data: bytes | bytearray | memoryview | np.ndarray, what: str = 'compressed image') -> np.ndarray:
    """Encoded bytes (JPEG, PNG, ...) -> RGB uint8; ImageTooLarge for frames over ``MAX_IMAGE_PIXELS``."""
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).ravel()
    if buf.size == 0:
        raise ImageError(f'{what}: no data')
    size = _declared_size(buf)
    if size is not None:
        check_image_size(*size, what=what)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageError(f'{what}: cannot be decoded (corrupt or not an image)')
    check_image_size(img.shape[1], img.shape[0], what)
    return array_to_rgb8(img, bgr=True)


def array_to_rgb8(img: np.ndarray, bgr: bool = False) -> np.ndarray:
    """Gray, gray+alpha, RGB(A)/BGR(A), 8 or 16 bit -> RGB uint8."""
    if img.ndim == 2:
        img = cv2.cvtColor(_to_uint8(img), cv2.COLOR_GRAY2RGB)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = cv2.cvtColor(_to_uint8(img[:, :, 0]), cv2.COLOR_GRAY2RGB)
    elif img.ndim == 3 and img.shape[2] == 2:  # gray + alpha
        img = cv2.cvtColor(_to_uint8(img[:, :, 0]), cv2.COLOR_GRAY2RGB)
    elif img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(_to_uint8(img), cv2.COLOR_BGR2RGB) if bgr else _to_uint8(img)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(_to_uint8(img), cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    else:
        raise ImageError(f'unsupported image shape {img.shape}')
    return np.ascontiguousarray(img)


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8; ImageError naming the file if it cannot be read."""
    path = Path(path)
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as err:
        raise ImageError(f'{path}: cannot be read: {err}') from err
    return decode_to_rgb8(data, what=str(path))


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files of a folder (by suffix), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f'not a folder: {folder}')
    it = folder.rglob('*') if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
