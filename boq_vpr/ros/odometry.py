"""Odometry input: checked poses into a ``PoseBuffer``, looked up by image stamp (``boq_vpr.inputs.poses``)."""
from __future__ import annotations

import math
from typing import Any

from ..inputs.images import FrameRejected
from ..inputs.messages import ODOMETRY, pose_from_message
from ..inputs.poses import PoseBuffer
from ..values import NS_PER_S, ns_to_sec
from .convert import stamp_to_ns


def odometry_pose(msg: Any) -> tuple[int, tuple[float, float, float], tuple[float, float, float, float], str]:
    """Read (stamp_ns, position, unit quaternion, frame_id) of a nav_msgs/Odometry.

    ``FrameRejected`` with a reason (``bad_stamp``, ``not_finite``, ``bad_quaternion``) when it cannot be used.
    """
    stamp_ns = stamp_to_ns(msg.header.stamp)
    sample = pose_from_message(msg, ODOMETRY)
    position, orientation = sample.position, sample.orientation
    if not all(math.isfinite(v) for v in position + orientation):
        raise FrameRejected('not_finite', 'odometry pose has NaN or infinite values')
    norm = math.sqrt(sum(c * c for c in orientation))
    if norm < 1e-6:
        raise FrameRejected('bad_quaternion', 'odometry orientation is a zero quaternion')
    return stamp_ns, position, tuple(c / norm for c in orientation), sample.frame_id  # type: ignore[return-value]


class OdometryInput:
    """The node's odometry.

    ``add(msg)`` from the subscription (never waits for a frame being processed), ``pose_at(stamp_ns)``
    from the worker.
    """

    def __init__(self, buffer_size: int, max_time_diff_s: float) -> None:
        self.buffer = PoseBuffer(buffer_size)
        self.max_time_diff_s = max_time_diff_s

    def add(self, msg: Any) -> None:
        """Store one message; ``FrameRejected`` (with ``stamp_out_of_order``, among others) when unusable."""
        stamp_ns, position, orientation, frame = odometry_pose(msg)
        if not self.buffer.add(stamp_ns, position, orientation, frame):
            raise FrameRejected('stamp_out_of_order', f'odometry stamp {ns_to_sec(stamp_ns):.9f} is not after the '
                                f'previous {ns_to_sec(self.buffer.last_stamp_ns or 0):.9f}')

    def pose_at(self, stamp_ns: int) -> tuple[tuple | None, tuple | None, str]:
        """Return the pose at ``stamp_ns`` (interpolated, or the nearest within ``max_time_diff_s``)."""
        return self.buffer.at(stamp_ns, int(self.max_time_diff_s * NS_PER_S))

    def clear(self) -> None:
        self.buffer.clear()
