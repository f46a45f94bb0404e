"""sensor_msgs/Image and CompressedImage -> RGB uint8, with every field checked first.

A malformed message raises ``FrameRejected`` whose ``reason`` names the problem (the node counts
rejections per reason); it never raises anything else for bad input. Raw images go through
cv_bridge when it is installed (a ROS install), else through ``boq_vpr.inputs.images.raw_to_rgb8``, and,
for the encodings only rosbags-image knows (YUV, 16-bit Bayer, 16-bit RGBA), through rosbags-image.
Compressed images are decoded with OpenCV (what cv_bridge does too) after a signature check, so a
truncated JPEG is rejected instead of decoded into a half-grey image.
"""
from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..errors import ImageError
from ..values import NS_PER_S
from ..inputs.images import (SUPPORTED_ENCODINGS, ImageTooLarge, array_to_rgb8, check_image_size, decode_to_rgb8,
                      encoding_layout, raw_to_rgb8)

log = logging.getLogger(__name__)

try:  # a ROS install provides cv_bridge; the PyPI wheels do not
    from cv_bridge import CvBridge, CvBridgeError  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the machine
    CvBridge = None
    CvBridgeError = Exception

try:
    from rosbags.image import image as _rbimage
except ImportError:  # pragma: no cover - rosbags-image is a dependency
    _rbimage = None

CONVERTERS = ('auto', 'cv_bridge', 'builtin')
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
    """Raw encodings this module converts."""
    names = set(SUPPORTED_ENCODINGS)
    if _rbimage is not None:
        names |= {e for e in _rbimage.ENCODINGMAP if e not in _PLANAR}
    return sorted(names)


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time -> integer nanoseconds; FrameRejected when the fields are invalid."""
    sec, nsec = int(stamp.sec), int(stamp.nanosec)
    if nsec < 0 or nsec >= NS_PER_S:
        raise FrameRejected('bad_stamp', f'stamp nanosec {nsec} outside [0, 1e9)')
    return sec * NS_PER_S + nsec


def check_raw(msg: Any) -> tuple[int, int]:
    """Validate the fields of a sensor_msgs/Image; returns (channels, bytes per channel)."""
    h, w, step, n = int(msg.height), int(msg.width), int(msg.step), len(msg.data)
    enc = str(msg.encoding)
    info = _bytes_per_pixel(enc)
    if info is None:
        raise FrameRejected('unknown_encoding', f'unsupported encoding {enc!r}; supported: {", ".join(raw_encodings())}')
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
    """The image rows without step padding."""
    h, step = int(msg.height), int(msg.step)
    if step == row:
        return bytes(memoryview(msg.data)[:row * h])
    buf = np.frombuffer(msg.data, np.uint8, count=step * h).reshape(h, step)[:, :row]
    return np.ascontiguousarray(buf).tobytes()


class ImageConverter:
    """Converts sensor_msgs/Image and CompressedImage messages to RGB uint8 ``H x W x 3``."""

    def __init__(self, converter: str = 'auto') -> None:
        if converter not in CONVERTERS:
            raise ValueError(f'unknown converter {converter!r}; valid: {", ".join(CONVERTERS)}')
        if converter == 'cv_bridge' and CvBridge is None:
            raise ImageError('converter cv_bridge requested but cv_bridge is not installed '
                             '(apt install ros-$ROS_DISTRO-cv-bridge) ; use converter auto or builtin')
        self._bridge = CvBridge() if converter in ('auto', 'cv_bridge') and CvBridge is not None else None
        self.name = 'cv_bridge' if self._bridge is not None else 'builtin'

    def raw(self, msg: Any) -> np.ndarray:
        """sensor_msgs/Image -> RGB uint8."""
        channels, itemsize = check_raw(msg)
        enc = str(msg.encoding)
        try:
            if self._bridge is not None:
                try:
                    return array_to_rgb8(self._bridge.imgmsg_to_cv2(msg, desired_encoding='rgb8'))
                except CvBridgeError:
                    # cv_bridge lacks some conversions (e.g. mono16 -> rgb8): fall through to ours
                    pass
            if enc.lower() in SUPPORTED_ENCODINGS:
                return raw_to_rgb8(msg.data, int(msg.height), int(msg.width), enc, int(msg.step),
                                   bool(msg.is_bigendian))
            return self._rosbags(msg, channels * itemsize * int(msg.width))
        except FrameRejected:
            raise
        except (ImageError, ValueError, TypeError) as err:
            raise FrameRejected('conversion_failed', f'{enc} {msg.width}x{msg.height}: {err}') from err
        except Exception as err:  # cv2.error and friends from third-party converters
            raise FrameRejected('conversion_failed', f'{enc} {msg.width}x{msg.height}: {type(err).__name__}: {err}') from err

    def _rosbags(self, msg: Any, row: int) -> np.ndarray:
        if _rbimage is None:
            raise FrameRejected('unknown_encoding', f'encoding {msg.encoding!r} needs rosbags-image')
        tight = SimpleNamespace(encoding=str(msg.encoding), height=int(msg.height), width=int(msg.width),
                                is_bigendian=bool(msg.is_bigendian), step=row, data=_tight_rows(msg, row))
        depth = _rbimage.ENCODINGMAP[str(msg.encoding)][0]
        # to RGB at the source depth; 16-bit is then stretched to 8 bits as raw_to_rgb8 does for mono16
        img = _rbimage.image_to_cvimage(tight, 'rgb8' if depth == 8 else 'rgb16')
        return array_to_rgb8(np.asarray(img))

    def compressed(self, msg: Any) -> np.ndarray:
        """sensor_msgs/CompressedImage (JPEG, PNG, ...) -> RGB uint8."""
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
            return decode_to_rgb8(data, what=f'compressed image ({msg.format})')
        except ImageTooLarge as err:
            raise FrameRejected('too_large', str(err)) from err
        except ImageError as err:
            raise FrameRejected('corrupt_compressed', str(err)) from err
        except Exception as err:  # cv2.error
            raise FrameRejected('corrupt_compressed', f'{type(err).__name__}: {err}') from err
