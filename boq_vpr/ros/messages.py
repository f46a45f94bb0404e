"""The node's output messages, built from the pipeline's ``FrameOutputs``.

What each one means to a back end: README, "The back-end contract".
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, PoseWithCovarianceStamped
from sensor_msgs.msg import Image
from std_msgs.msg import ColorRGBA, Float64MultiArray, MultiArrayDimension
from visualization_msgs.msg import Marker, MarkerArray

from ..detection import CANDIDATE_COLUMNS, LoopCandidate
from ..values import ns_to_sec


def candidates_table(rows: Sequence[Sequence[float]]) -> Float64MultiArray:
    """``~/candidates``: one row per accepted candidate, columns named in ``layout.dim[1].label``."""
    table = Float64MultiArray()
    n, m = len(rows), len(CANDIDATE_COLUMNS)
    table.layout.dim = [MultiArrayDimension(label='candidates', size=n, stride=n * m),
                        MultiArrayDimension(label=','.join(CANDIDATE_COLUMNS), size=m, stride=m)]
    table.data = [float(x) for row in rows for x in row]
    return table


def loop_closure(candidate: LoopCandidate) -> Float64MultiArray:
    """``~/loop_closure``: ``[query_stamp_sec, match_stamp_sec]`` (the LIO-SAM convention)."""
    assert candidate.kind == 'loop', 'only loops of the running session go on ~/loop_closure'
    return Float64MultiArray(data=[ns_to_sec(candidate.query_stamp_ns), ns_to_sec(candidate.match_stamp_ns)])


def relocalization(candidate: LoopCandidate, stamp: Any, frame_id: str, covariance: Sequence[float]
                   ) -> PoseWithCovarianceStamped:
    """Build ``~/relocalization``: the matched keyframe's stored pose in its map's frame.

    Stamped with the query's stamp. The keyframe must have a position; without an orientation the identity quaternion
    is written and ``covariance`` must say that it is unknown.
    """
    kf = candidate.match_keyframe
    assert kf.position is not None
    msg = PoseWithCovarianceStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    p = msg.pose.pose.position
    p.x, p.y, p.z = (float(v) for v in kf.position)
    o = msg.pose.pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in (kf.orientation if kf.orientation is not None else (0, 0, 0, 1)))
    msg.pose.covariance = [float(x) for x in covariance]
    return msg


def loop_markers(edges: Sequence[tuple[tuple, tuple]], frame_id: str, stamp: Any) -> MarkerArray:
    """``~/markers``: loop edges (query position -> match position), all in ``frame_id``."""
    lines = Marker()
    lines.header.stamp = stamp
    lines.header.frame_id = frame_id
    lines.ns = 'loop_closures'
    lines.id = 0
    lines.type = Marker.LINE_LIST
    lines.action = Marker.ADD
    lines.pose.orientation.w = 1.0
    lines.scale.x = 0.05
    lines.color = ColorRGBA(r=1.0, g=0.2, b=0.2, a=1.0)
    lines.points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for e in edges for p in e]
    return MarkerArray(markers=[lines])


def rgb_image(img: np.ndarray, header: Any) -> Image:
    """Build a sensor_msgs/Image (rgb8) of an RGB uint8 array."""
    msg = Image()
    msg.header = header
    msg.height, msg.width = int(img.shape[0]), int(img.shape[1])
    msg.encoding = 'rgb8'
    msg.is_bigendian = 0
    msg.step = int(img.shape[1] * 3)
    msg.data = np.ascontiguousarray(img, np.uint8).tobytes()
    return msg


LEVELS = {'ok': DiagnosticStatus.OK, 'warn': DiagnosticStatus.WARN, 'error': DiagnosticStatus.ERROR}


def diagnostics(name: str, hardware_id: str, level: str, message: str, values: dict[str, str], stamp: Any
                ) -> DiagnosticArray:
    """``/diagnostics``: one status with the node's key/values."""
    status = DiagnosticStatus()
    status.name = name
    status.hardware_id = hardware_id
    status.level = LEVELS[level]
    status.message = message
    status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
    arr = DiagnosticArray()
    arr.header.stamp = stamp
    arr.status = [status]
    return arr
