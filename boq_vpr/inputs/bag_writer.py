"""Bag output with ``rosbags`` (no ROS install needed).

``BagWriter`` writes rosbag2 (sqlite3, mcap) and ROS 1 bags of images, poses and any standard
message, or of messages already serialized.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import BagError, ConfigError, ImageError
from ..values import ns_to_stamp
from .messages import COMPRESSED_IMAGE, ODOMETRY, POSE_COV_STAMPED, POSE_STAMPED, POSE_TYPES, RAW_IMAGE, typestore

log = logging.getLogger(__name__)

STORAGES = ('sqlite3', 'mcap', 'ros1')
IMAGE_FORMATS = ('raw', 'jpeg', 'png')


class BagWriter:
    """Writes a new bag: rosbag2 (``sqlite3`` or ``mcap``) or ROS 1 (``ros1``, a ``.bag`` file).

    Use as a context manager; on an exception the partial bag is closed as far as it got. The
    message log time is the stamp given (so replay follows the recorded timing).
    """

    def __init__(self, path: str | Path, storage: str = 'sqlite3', version: int = 8) -> None:
        if storage not in STORAGES:
            raise ConfigError(f'storage must be one of {", ".join(STORAGES)}, got {storage!r}')
        self.path = Path(path)
        self.storage = storage
        if self.path.exists():
            raise BagError(f'{self.path} exists already; choose a new output path (bags are never overwritten)')
        if storage == 'ros1' and self.path.suffix != '.bag':
            raise BagError(f'{self.path}: a ROS 1 bag must end in .bag')
        self._ros1 = storage == 'ros1'
        self.typestore = typestore(self._ros1)
        if self._ros1:
            from rosbags.rosbag1 import Writer as Writer1
            self._writer = Writer1(self.path)
        else:
            from rosbags.rosbag2 import StoragePlugin, Writer as Writer2
            plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
            self._writer = Writer2(self.path, version=version, storage_plugin=plugin)
        self._connections: dict[tuple[str, str], Any] = {}
        self.counts: dict[str, int] = {}
        self._open = False

    def __enter__(self) -> 'BagWriter':
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def open(self) -> None:
        self._writer.open()
        self._open = True

    def close(self) -> None:
        if self._open:
            self._writer.close()
            self._open = False
            log.info('wrote %s (%s): %s', self.path, self.storage,
                     ', '.join(f'{t} {n}' for t, n in self.counts.items()))

    def msg(self, msgtype: str, **fields: Any) -> Any:
        """Build a message object of ``msgtype`` (e.g. 'std_msgs/msg/Header') from keyword fields."""
        return self.typestore.types[msgtype](**fields)

    def header(self, stamp_ns: int, frame_id: str = '', seq: int = 0) -> Any:
        sec, nsec = ns_to_stamp(stamp_ns)
        stamp = self.msg('builtin_interfaces/msg/Time', sec=sec, nanosec=nsec)
        if self._ros1:
            return self.msg('std_msgs/msg/Header', seq=seq, stamp=stamp, frame_id=frame_id)
        return self.msg('std_msgs/msg/Header', stamp=stamp, frame_id=frame_id)

    def write(self, topic: str, msgtype: str, stamp_ns: int, message: Any) -> None:
        """Serialize and write one message at log time ``stamp_ns``."""
        if not self._open:
            raise BagError(f'{self.path}: writer is not open')
        data = (self.typestore.serialize_ros1(message, msgtype) if self._ros1
                else self.typestore.serialize_cdr(message, msgtype))
        self.write_raw(topic, msgtype, stamp_ns, data)

    def write_raw(self, topic: str, msgtype: str, stamp_ns: int, data: bytes) -> None:
        """Write already serialized bytes (CDR for rosbag2, ROS 1 for ROS 1 bags)."""
        if not self._open:
            raise BagError(f'{self.path}: writer is not open')
        key = (topic, msgtype)
        conn = self._connections.get(key)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
            self._connections[key] = conn
        self._writer.write(conn, int(stamp_ns), data)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def image_message(self, rgb: np.ndarray, stamp_ns: int, frame_id: str = 'camera',
                      fmt: str = 'raw', jpeg_quality: int = 95) -> tuple[str, Any]:
        """Return (msgtype, message) of an RGB uint8 image.

        A raw ``rgb8`` Image, or a CompressedImage in JPEG/PNG with the image_transport format string.
        """
        if fmt not in IMAGE_FORMATS:
            raise ConfigError(f'image format must be one of {", ".join(IMAGE_FORMATS)}, got {fmt!r}')
        rgb = np.ascontiguousarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ImageError(f'expected RGB uint8 HxWx3, got {rgb.dtype} {rgb.shape}')
        header = self.header(stamp_ns, frame_id)
        if fmt == 'raw':
            h, w = rgb.shape[:2]
            return RAW_IMAGE, self.msg(RAW_IMAGE, header=header, height=h, width=w, encoding='rgb8',
                                       is_bigendian=0, step=w * 3, data=rgb.reshape(-1))
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if fmt == 'jpeg' else []
        ok, buf = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png', bgr, params)
        if not ok:  # pragma: no cover - OpenCV fails only on invalid input
            raise ImageError(f'cannot encode image as {fmt}')
        return COMPRESSED_IMAGE, self.msg(COMPRESSED_IMAGE, header=header,
                                          format=f'rgb8; {fmt} compressed bgr8', data=buf.reshape(-1))

    def add_image(self, topic: str, rgb: np.ndarray, stamp_ns: int, frame_id: str = 'camera',
                  fmt: str = 'raw', jpeg_quality: int = 95) -> None:
        """Write an RGB uint8 image as Image (``fmt='raw'``) or CompressedImage (jpeg, png)."""
        msgtype, message = self.image_message(rgb, stamp_ns, frame_id, fmt, jpeg_quality)
        self.write(topic, msgtype, stamp_ns, message)

    def pose_message(self, msgtype: str, stamp_ns: int, position: Sequence[float],
                     orientation: Sequence[float] | None = None, frame_id: str = 'map',
                     child_frame_id: str = '') -> Any:
        """Build a PoseStamped, PoseWithCovarianceStamped or Odometry message."""
        q = tuple(orientation) if orientation is not None else (0.0, 0.0, 0.0, 1.0)
        pose = self.msg('geometry_msgs/msg/Pose',
                        position=self.msg('geometry_msgs/msg/Point', x=float(position[0]), y=float(position[1]),
                                          z=float(position[2])),
                        orientation=self.msg('geometry_msgs/msg/Quaternion', x=float(q[0]), y=float(q[1]),
                                             z=float(q[2]), w=float(q[3])))
        header = self.header(stamp_ns, frame_id)
        if msgtype == POSE_STAMPED:
            return self.msg(POSE_STAMPED, header=header, pose=pose)
        cov = self.msg('geometry_msgs/msg/PoseWithCovariance', pose=pose, covariance=np.zeros(36, np.float64))
        if msgtype == POSE_COV_STAMPED:
            return self.msg(POSE_COV_STAMPED, header=header, pose=cov)
        if msgtype == ODOMETRY:
            zero = self.msg('geometry_msgs/msg/Vector3', x=0.0, y=0.0, z=0.0)
            twist = self.msg('geometry_msgs/msg/TwistWithCovariance',
                             twist=self.msg('geometry_msgs/msg/Twist', linear=zero, angular=zero),
                             covariance=np.zeros(36, np.float64))
            return self.msg(ODOMETRY, header=header, child_frame_id=child_frame_id, pose=cov, twist=twist)
        raise ConfigError(f'pose message type must be one of {", ".join(POSE_TYPES)}, got {msgtype!r}')

    def add_pose(self, topic: str, stamp_ns: int, position: Sequence[float],
                 orientation: Sequence[float] | None = None, frame_id: str = 'map',
                 msgtype: str = POSE_STAMPED, child_frame_id: str = '') -> None:
        """Write a pose (PoseStamped by default; Odometry or PoseWithCovarianceStamped on request)."""
        self.write(topic, msgtype, stamp_ns,
                   self.pose_message(msgtype, stamp_ns, position, orientation, frame_id, child_frame_id))
