"""ROS messages without a ROS install.

The message type names the package reads and writes, the rosbags type store of their definitions,
and a pose or an image read out of a message.

The readers take the fields of a message object, so the same function serves a message read from
a bag (rosbags) and one received by the node (rclpy).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..values import stamp_to_ns
from .images import compressed_message_to_rgb8, raw_message_to_rgb8

RAW_IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE = 'sensor_msgs/msg/CompressedImage'
IMAGE_TYPES = (RAW_IMAGE, COMPRESSED_IMAGE)
ODOMETRY = 'nav_msgs/msg/Odometry'
POSE_STAMPED = 'geometry_msgs/msg/PoseStamped'
POSE_COV_STAMPED = 'geometry_msgs/msg/PoseWithCovarianceStamped'
POSE_TYPES = (ODOMETRY, POSE_STAMPED, POSE_COV_STAMPED)


def typestore(ros1: bool = False):
    """Return the rosbags type store of ROS 1 (Noetic) or of the newest ROS 2 release rosbags knows."""
    from rosbags.typesys import Stores, get_typestore
    if ros1:
        return get_typestore(Stores.ROS1_NOETIC)
    # the newest ROS 2 message definitions this rosbags release knows (older ones lack Kilted)
    name = next(n for n in ('ROS2_KILTED', 'ROS2_JAZZY', 'ROS2_HUMBLE') if hasattr(Stores, n))
    return get_typestore(getattr(Stores, name))


@dataclass
class PoseSample:
    """One pose message: stamp, position (x, y, z), orientation quaternion (x, y, z, w), frame."""

    stamp_ns: int
    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float]
    frame_id: str = ''


def pose_from_message(msg: Any, msgtype: str) -> PoseSample:
    """Read an Odometry, PoseStamped or PoseWithCovarianceStamped message as a ``PoseSample``.

    The values are the message's own (the quaternion is not normalized). ValueError when the
    header stamp is invalid; ConfigError when ``msgtype`` is not a pose type.
    """
    if msgtype == ODOMETRY or msgtype == POSE_COV_STAMPED:
        pose = msg.pose.pose
    elif msgtype == POSE_STAMPED:
        pose = msg.pose
    else:
        raise ConfigError(f'{msgtype} is not a pose message type ({", ".join(POSE_TYPES)})')
    p, q = pose.position, pose.orientation
    return PoseSample(stamp_to_ns(msg.header.stamp), (float(p.x), float(p.y), float(p.z)),
                      (float(q.x), float(q.y), float(q.z), float(q.w)), str(msg.header.frame_id))


def image_from_message(msg: Any, msgtype: str, what: str = 'image') -> np.ndarray:
    """Convert an Image or CompressedImage message to RGB uint8.

    ``FrameRejected`` (an ``ImageError``) with its reason when the message cannot be used;
    ConfigError when ``msgtype`` is not an image type. ``what`` names the message in decoding errors.
    """
    if msgtype == RAW_IMAGE:
        return raw_message_to_rgb8(msg)
    if msgtype == COMPRESSED_IMAGE:
        return compressed_message_to_rgb8(msg, what=what)
    raise ConfigError(f'{what}: {msgtype} is not an image message type ({", ".join(IMAGE_TYPES)})')
