"""sensor_msgs/Image and CompressedImage -> RGB uint8 for the node, with every field checked first.

The conversion and its checks are ``boq_vpr.inputs.images`` (``raw_message_to_rgb8``,
``compressed_message_to_rgb8``): a malformed message raises ``FrameRejected`` whose ``reason`` names
the problem, and nothing else for bad input. This module adds the node's choice of converter: raw
images go through cv_bridge when it is installed (a ROS install) and converter is ``auto`` or
``cv_bridge``, and through the package's own conversion where cv_bridge lacks one.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from ..inputs.images import FrameRejected, array_to_rgb8, compressed_message_to_rgb8, raw_message_to_rgb8
from ..values import stamp_to_ns as _stamp_to_ns

try:  # a ROS install provides cv_bridge; the PyPI wheels do not
    from cv_bridge import CvBridge, CvBridgeError  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the machine
    CvBridge = None
    CvBridgeError = Exception

CONVERTERS = ('auto', 'cv_bridge', 'builtin')


def stamp_to_ns(stamp: Any) -> int:
    """Convert a builtin_interfaces/Time to integer nanoseconds; ``FrameRejected`` when its fields are invalid."""
    try:
        return _stamp_to_ns(stamp)
    except ValueError as err:
        raise FrameRejected('bad_stamp', str(err)) from None


class ImageConverter:
    """Converts sensor_msgs/Image and CompressedImage messages to RGB uint8 ``H x W x 3``."""

    def __init__(self, converter: str = 'auto') -> None:
        if converter not in CONVERTERS:
            raise ConfigError(f'unknown converter {converter!r}; valid: {", ".join(CONVERTERS)}')
        if converter == 'cv_bridge' and CvBridge is None:
            raise ConfigError('converter cv_bridge requested but cv_bridge is not installed '
                              '(apt install ros-$ROS_DISTRO-cv-bridge) ; use converter auto or builtin')
        self._bridge = CvBridge() if converter in ('auto', 'cv_bridge') and CvBridge is not None else None
        self.name = 'cv_bridge' if self._bridge is not None else 'builtin'

    def _with_bridge(self, msg: Any) -> np.ndarray | None:
        try:
            return array_to_rgb8(self._bridge.imgmsg_to_cv2(msg, desired_encoding='rgb8'))
        except CvBridgeError:
            return None   # cv_bridge lacks some conversions (e.g. mono16 -> rgb8): the package's own follows

    def raw(self, msg: Any) -> np.ndarray:
        """Convert a sensor_msgs/Image to RGB uint8."""
        return raw_message_to_rgb8(msg, first=self._with_bridge if self._bridge is not None else None)

    def compressed(self, msg: Any) -> np.ndarray:
        """Convert a sensor_msgs/CompressedImage (JPEG, PNG, ...) to RGB uint8."""
        return compressed_message_to_rgb8(msg)
