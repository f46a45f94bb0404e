"""Image conversion: files, encoded bytes, raw buffers and image messages -> RGB uint8 ``H x W x 3``.

The single conversion step used by the CLI, the node, the replay tool and the evaluator. Image
messages (``sensor_msgs/Image`` and ``CompressedImage``, from rclpy or from a bag read with
rosbags) have every field checked first (``raw_message_to_rgb8``, ``compressed_message_to_rgb8``):
a malformed one raises ``FrameRejected`` whose ``reason`` names the problem (the node counts
rejections per reason). Raw encodings this module does not convert itself (YUV, 16-bit Bayer,
16-bit RGBA) go through rosbags-image. Compressed images are decoded with OpenCV after a signature
check, so a truncated JPEG is rejected instead of decoded into a half-grey image. No ROS imports.
"""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import cv2
import numpy as np

from ..errors import ImageError

try:
    from rosbags.image import image as _rbimage
except ImportError:  # pragma: no cover - rosbags-image is a dependency
    _rbimage = None

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
    """Convert a raw buffer (sensor_msgs/Image fields) to RGB uint8. Validates sizes before touching data."""
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
    """Decode bytes (JPEG, PNG, ...) to RGB uint8; ImageTooLarge for frames over ``MAX_IMAGE_PIXELS``."""
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


# ---------------------------------------------------------------------------------------------
# image messages (rclpy or rosbags objects: only their fields are read)

_PLANAR = ('nv12', 'nv21')  # 4:2:0 planar layouts: not supported


class FrameRejected(ImageError):
    """A message that cannot be used; ``reason`` is a short counter name (e.g. ``wrong_step``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _bytes_per_pixel(encoding: str) -> tuple[int, int] | None:
    """(channels, bytes per channel) of a raw encoding, or None when unknown."""
    layout = encoding_layout(encoding)
    if layout is not None:
        return layout
    if _rbimage is not None and encoding in _rbimage.ENCODINGMAP and encoding not in _PLANAR:
        depth, _fmt, typestr, channels = _rbimage.ENCODINGMAP[encoding]
        return channels, np.dtype(typestr).itemsize
    return None


def raw_encodings() -> list[str]:
    """Raw encodings of image messages this module converts."""
    names = set(SUPPORTED_ENCODINGS)
    if _rbimage is not None:
        names |= {e for e in _rbimage.ENCODINGMAP if e not in _PLANAR}
    return sorted(names)


def check_raw_message(msg: Any) -> tuple[int, int]:
    """Validate the fields of a sensor_msgs/Image; return (channels, bytes per channel)."""
    h, w, step, n = int(msg.height), int(msg.width), int(msg.step), len(msg.data)
    enc = str(msg.encoding)
    info = _bytes_per_pixel(enc)
    if info is None:
        raise FrameRejected('unknown_encoding',
                            f'unsupported encoding {enc!r}; supported: {", ".join(raw_encodings())}')
    if h == 0 or w == 0:
        raise FrameRejected('empty_image', f'empty image {w}x{h} ({enc})')
    try:
        check_image_size(w, h, f'{enc} image')
    except ImageTooLarge as err:
        raise FrameRejected('too_large', str(err)) from None
    channels, itemsize = info
    row = w * channels * itemsize
    if step < row or (n == row * h and step != row):
        raise FrameRejected('wrong_step', f'step {step} does not fit a {w}x{h} {enc} image '
                            f'(a row is {row} bytes; data has {n} bytes)')
    if n < step * h:
        raise FrameRejected('truncated_data', f'data has {n} bytes, a {w}x{h} {enc} image with step {step} '
                            f'needs {step * h}')
    return info


def _tight_rows(msg: Any, row: int) -> bytes:
    """Return the image rows without step padding."""
    h, step = int(msg.height), int(msg.step)
    if step == row:
        return bytes(memoryview(msg.data)[:row * h])
    buf = np.frombuffer(msg.data, np.uint8, count=step * h).reshape(h, step)[:, :row]
    return np.ascontiguousarray(buf).tobytes()


def _rosbags_to_rgb8(msg: Any, row: int) -> np.ndarray:
    """Convert an encoding only rosbags-image knows to RGB uint8."""
    if _rbimage is None:
        raise FrameRejected('unknown_encoding', f'encoding {msg.encoding!r} needs rosbags-image')
    tight = SimpleNamespace(encoding=str(msg.encoding), height=int(msg.height), width=int(msg.width),
                            is_bigendian=bool(msg.is_bigendian), step=row, data=_tight_rows(msg, row))
    depth = _rbimage.ENCODINGMAP[str(msg.encoding)][0]
    # to RGB at the source depth; 16-bit is then stretched to 8 bits as raw_to_rgb8 does for mono16
    img = _rbimage.image_to_cvimage(tight, 'rgb8' if depth == 8 else 'rgb16')
    return array_to_rgb8(np.asarray(img))


def raw_message_to_rgb8(msg: Any, first: Callable[[Any], np.ndarray | None] | None = None) -> np.ndarray:
    """Convert a sensor_msgs/Image to RGB uint8, its fields checked first (``check_raw_message``).

    ``first``: a converter tried before this module's (the node's cv_bridge); it returns None for
    an image it does not convert. Every failure is a ``FrameRejected`` with its reason.
    """
    channels, itemsize = check_raw_message(msg)
    enc = str(msg.encoding)
    try:
        if first is not None:
            rgb = first(msg)
            if rgb is not None:
                return rgb
        if enc.lower() in SUPPORTED_ENCODINGS:
            return raw_to_rgb8(msg.data, int(msg.height), int(msg.width), enc, int(msg.step),
                               bool(msg.is_bigendian))
        return _rosbags_to_rgb8(msg, channels * itemsize * int(msg.width))
    except FrameRejected:
        raise
    except (ImageError, ValueError, TypeError) as err:
        raise FrameRejected('conversion_failed', f'{enc} {msg.width}x{msg.height}: {err}') from err
    except Exception as err:  # cv2.error and friends from third-party converters
        raise FrameRejected('conversion_failed',
                            f'{enc} {msg.width}x{msg.height}: {type(err).__name__}: {err}') from err


def compressed_message_to_rgb8(msg: Any, what: str | None = None) -> np.ndarray:
    """Convert a sensor_msgs/CompressedImage (JPEG, PNG, ...) to RGB uint8.

    ``what`` names the image in decoding errors (default: its format). Every failure is a
    ``FrameRejected`` with its reason.
    """
    fmt = str(msg.format).lower()
    data = bytes(msg.data) if not isinstance(msg.data, (bytes, bytearray)) else msg.data
    if 'compresseddepth' in fmt:
        raise FrameRejected('unsupported_format', f'compressed depth images ({msg.format!r}) are not camera images')
    if len(data) == 0:
        raise FrameRejected('empty_image', f'compressed image ({msg.format!r}) has no data')
    if data[:2] == b'\xff\xd8':  # JPEG: must end with the EOI marker (trailing padding allowed)
        if b'\xff\xd9' not in data[-64:]:
            raise FrameRejected('corrupt_compressed', f'JPEG of {len(data)} bytes has no end marker (truncated)')
    elif data[:8] == b'\x89PNG\r\n\x1a\n':
        if b'IEND' not in data[-16:]:
            raise FrameRejected('corrupt_compressed', f'PNG of {len(data)} bytes has no IEND chunk (truncated)')
    elif 'jpeg' in fmt or 'jpg' in fmt or 'png' in fmt:
        raise FrameRejected('corrupt_compressed', f'format {msg.format!r} but the data is not a JPEG/PNG stream')
    try:
        return decode_to_rgb8(data, what=what or f'compressed image ({msg.format})')
    except ImageTooLarge as err:
        raise FrameRejected('too_large', str(err)) from err
    except ImageError as err:
        raise FrameRejected('corrupt_compressed', str(err)) from err
    except Exception as err:  # cv2.error
        raise FrameRejected('corrupt_compressed', f'{type(err).__name__}: {err}') from err


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
