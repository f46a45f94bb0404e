"""Drive a running ``vpr_node`` over DDS.

Start it as a process, publish frames, collect its outputs, call its services. Used by
``boq-vpr bench node`` and the integration tests.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from nav_msgs.msg import Odometry
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import SetBool, Trigger
from visualization_msgs.msg import MarkerArray

from ..values import ns_to_stamp


def stamp_msg(msg: Any, stamp_ns: int, frame_id: str = 'camera') -> Any:
    msg.header.stamp.sec, msg.header.stamp.nanosec = ns_to_stamp(stamp_ns)
    msg.header.frame_id = frame_id
    return msg


def image_msg(rgb: np.ndarray, stamp_ns: int, encoding: str = 'rgb8') -> Image:
    """Build a sensor_msgs/Image of an RGB uint8 image in ``encoding`` (rgb8, bgr8, rgba8, bgra8 or mono8)."""
    conv = {'rgb8': None, 'bgr8': cv2.COLOR_RGB2BGR, 'rgba8': cv2.COLOR_RGB2RGBA, 'bgra8': cv2.COLOR_RGB2BGRA,
            'mono8': cv2.COLOR_RGB2GRAY}
    arr = rgb if conv[encoding] is None else cv2.cvtColor(rgb, conv[encoding])
    arr = np.ascontiguousarray(arr)
    msg = Image()
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(arr.shape[1] * (arr.shape[2] if arr.ndim == 3 else 1))
    msg.data = arr.tobytes()
    return stamp_msg(msg, stamp_ns)


def compressed_msg(rgb: np.ndarray, stamp_ns: int, fmt: str = 'jpeg') -> CompressedImage:
    """Build a sensor_msgs/CompressedImage (jpeg or png) of an RGB uint8 image."""
    ok, buf = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok, 'encoding failed'
    msg = CompressedImage()
    msg.format = fmt
    msg.data = buf.tobytes()
    return stamp_msg(msg, stamp_ns)


def odom_msg(stamp_ns: int, position: Sequence[float], orientation: Sequence[float] = (0.0, 0.0, 0.0, 1.0),
             frame_id: str = 'odom') -> Odometry:
    msg = Odometry()
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    p.x, p.y, p.z = (float(v) for v in position)
    q.x, q.y, q.z, q.w = (float(v) for v in orientation)
    msg.child_frame_id = 'base_link'
    return stamp_msg(msg, stamp_ns, frame_id)


@dataclass
class Received:
    """A message and the monotonic time it arrived."""

    t: float
    msg: Any


@dataclass
class Inbox:
    """Everything received from the node, in arrival order."""

    loop_closures: list[Received] = field(default_factory=list)
    candidates: list[Received] = field(default_factory=list)
    relocalizations: list[Received] = field(default_factory=list)
    markers: list[Received] = field(default_factory=list)
    attention: list[Received] = field(default_factory=list)
    diagnostics: list[Received] = field(default_factory=list)


def diagnostics_dict(msg: DiagnosticArray, name_contains: str = 'pipeline') -> dict[str, str] | None:
    """Return the key/values of the node's pipeline status in a /diagnostics message."""
    for status in msg.status:
        if name_contains in status.name:
            out = {kv.key: kv.value for kv in status.values}
            out['_level'] = str(int.from_bytes(status.level, 'little') if isinstance(status.level, bytes)
                                else int(status.level))
            out['_message'] = status.message
            return out
    return None


def candidate_rows(msg: Float64MultiArray) -> list[dict[str, float]]:
    """Return the ~/candidates table as dicts keyed by the column names in ``layout.dim[1].label``."""
    cols = msg.layout.dim[1].label.split(',')
    n = msg.layout.dim[0].size
    data = list(msg.data)
    return [dict(zip(cols, data[i * len(cols):(i + 1) * len(cols)])) for i in range(n)]


class VprClient:
    """A node of its own (in its own rclpy context and domain) talking to ``vpr_node``."""

    def __init__(self, domain_id: int, node_name: str = '/vpr_node', image_reliable: bool = True,
                 keep_messages: bool = True) -> None:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node('vpr_client', context=self.context)
        self.target = node_name.rstrip('/')
        self.inbox = Inbox()
        self.keep_messages = keep_messages
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[str, Received], None]] = []
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE if image_reliable
                         else ReliabilityPolicy.BEST_EFFORT)
        self.pub_image = self.node.create_publisher(Image, 'image', qos)
        self.pub_compressed = self.node.create_publisher(CompressedImage, 'image/compressed', qos)
        self.pub_odom = self.node.create_publisher(Odometry, 'odom', qos)
        t = self.target
        self._subs = [
            self.node.create_subscription(Float64MultiArray, f'{t}/loop_closure', self._cb('loop_closures'), 100),
            self.node.create_subscription(Float64MultiArray, f'{t}/candidates', self._cb('candidates'), 100),
            self.node.create_subscription(PoseWithCovarianceStamped, f'{t}/relocalization',
                                          self._cb('relocalizations'), 100),
            self.node.create_subscription(MarkerArray, f'{t}/markers', self._cb('markers'), 100),
            self.node.create_subscription(Image, f'{t}/attention', self._cb('attention'), 10),
            self.node.create_subscription(DiagnosticArray, '/diagnostics', self._cb('diagnostics'), 100),
        ]
        self.srv_save = self.node.create_client(Trigger, f'{t}/save_map')
        self.srv_clear = self.node.create_client(Trigger, f'{t}/clear_map')
        self.srv_mapping = self.node.create_client(SetBool, f'{t}/set_mapping')
        self.srv_get_params = self.node.create_client(GetParameters, f'{t}/get_parameters')
        self.srv_set_params = self.node.create_client(SetParameters, f'{t}/set_parameters')
        self.srv_change_state = self.node.create_client(ChangeState, f'{t}/change_state')
        self.srv_get_state = self.node.create_client(GetState, f'{t}/get_state')
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # context shut down while spinning
            pass

    def _cb(self, box: str) -> Callable[[Any], None]:
        def callback(msg: Any) -> None:
            item = Received(time.monotonic(), msg)
            with self._lock:
                if self.keep_messages or box == 'diagnostics':
                    getattr(self.inbox, box).append(item)
                    if box == 'diagnostics' and len(self.inbox.diagnostics) > 50:
                        del self.inbox.diagnostics[:-50]
                for fn in self._callbacks:
                    fn(box, item)
        return callback

    def on_message(self, fn: Callable[[str, Received], None]) -> None:
        """Call ``fn(box, received)`` for every message (from the spinning thread)."""
        self._callbacks.append(fn)

    # ------------------------------------------------------------------ waiting
    @staticmethod
    def wait_until(predicate: Callable[[], bool], timeout: float, period: float = 0.05) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(period)
        return predicate()

    def wait_for_node(self, timeout: float = 120.0, compressed: bool = False) -> bool:
        """Until the node subscribes our image topic, publishes diagnostics and serves its services."""
        pub = self.pub_compressed if compressed else self.pub_image
        return self.wait_until(lambda: pub.get_subscription_count() > 0 and self.diagnostics() is not None
                               and self.srv_save.service_is_ready() and self.srv_clear.service_is_ready()
                               and self.srv_mapping.service_is_ready()
                               and self._subs[0].get_publisher_count() > 0, timeout, 0.2)

    def diagnostics(self) -> dict[str, str] | None:
        """Return the newest pipeline status of the node, or None before the first."""
        with self._lock:
            msgs = list(self.inbox.diagnostics)
        for r in reversed(msgs):
            d = diagnostics_dict(r.msg)
            if d is not None:
                return d
        return None

    def wait_for_diagnostics(self, predicate: Callable[[dict[str, str]], bool], timeout: float = 30.0
                             ) -> dict[str, str] | None:
        """Wait for the first newest status satisfying ``predicate`` within ``timeout``; None if none does."""
        found: list[dict[str, str]] = []

        def check() -> bool:
            d = self.diagnostics()
            if d is not None and predicate(d):
                found.append(d)
                return True
            return False
        return found[0] if self.wait_until(check, timeout, 0.1) else None

    def counter(self, key: str) -> int:
        d = self.diagnostics() or {}
        return int(d.get(key, 0))

    # ------------------------------------------------------------------ services
    def call(self, client, request, timeout: float = 30.0):
        """Call a service and wait for the response (None on timeout)."""
        if not client.wait_for_service(timeout_sec=timeout):
            return None
        future = client.call_async(request)
        done = threading.Event()
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(timeout):
            return None
        return future.result()

    def save_map(self, timeout: float = 60.0):
        return self.call(self.srv_save, Trigger.Request(), timeout)

    def clear_map(self, timeout: float = 30.0):
        return self.call(self.srv_clear, Trigger.Request(), timeout)

    def set_mapping(self, enable: bool, timeout: float = 30.0):
        return self.call(self.srv_mapping, SetBool.Request(data=enable), timeout)

    def get_parameters(self, names: Sequence[str], timeout: float = 30.0) -> dict[str, Any] | None:
        """Return the node's values of ``names`` (None on timeout)."""
        response = self.call(self.srv_get_params, GetParameters.Request(names=list(names)), timeout)
        if response is None:
            return None
        return {n: parameter_value_to_python(v) for n, v in zip(names, response.values)}

    def set_parameters(self, values: dict[str, Any], timeout: float = 30.0) -> dict[str, tuple[bool, str]] | None:
        """Set parameters one by one; name -> (successful, reason) (None on timeout)."""
        request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                    for k, v in values.items()])
        response = self.call(self.srv_set_params, request, timeout)
        if response is None:
            return None
        return {k: (r.successful, r.reason) for k, r in zip(values, response.results)}

    def lifecycle_state(self, timeout: float = 30.0) -> str | None:
        """Return the node's lifecycle state label (unconfigured, inactive, active, finalized), None on timeout."""
        response = self.call(self.srv_get_state, GetState.Request(), timeout)
        return None if response is None else response.current_state.label

    def change_state(self, transition: str, timeout: float = 300.0) -> bool | None:
        """Trigger a lifecycle transition by label (configure, activate, deactivate, cleanup, shutdown).

        Return whether it succeeded (None on timeout).
        """
        ids = {'configure': Transition.TRANSITION_CONFIGURE, 'activate': Transition.TRANSITION_ACTIVATE,
               'deactivate': Transition.TRANSITION_DEACTIVATE, 'cleanup': Transition.TRANSITION_CLEANUP}
        state = self.lifecycle_state(timeout) if transition == 'shutdown' else None
        if transition == 'shutdown':
            ids['shutdown'] = {'unconfigured': Transition.TRANSITION_UNCONFIGURED_SHUTDOWN,
                               'inactive': Transition.TRANSITION_INACTIVE_SHUTDOWN,
                               'active': Transition.TRANSITION_ACTIVE_SHUTDOWN}.get(state or '', 0)
        response = self.call(self.srv_change_state, ChangeState.Request(transition=Transition(id=ids[transition])),
                             timeout)
        return None if response is None else bool(response.success)

    def close(self) -> None:
        try:
            self.executor.shutdown(timeout_sec=1.0)
        finally:
            self.node.destroy_node()
            rclpy.try_shutdown(context=self.context)
            self._thread.join(timeout=5.0)


class NodeProcess:
    """``vpr_node`` as a separate process (``python -m boq_vpr.ros.node``) in its own ROS domain."""

    def __init__(self, domain_id: int, params_file: str | Path | None = None, params: dict[str, Any] | None = None,
                 log_path: str | Path | None = None, ros_args: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, '-m', 'boq_vpr.ros.node', '--ros-args']
        if params_file is not None:
            cmd += ['--params-file', str(params_file)]
        for key, value in (params or {}).items():
            cmd += ['-p', f'{key}:={_param_text(value)}']
        cmd += list(ros_args)
        self.cmd = cmd
        self.log_path = Path(log_path) if log_path else None
        full_env = dict(os.environ)
        full_env.update({'ROS_DOMAIN_ID': str(domain_id), 'PYTHONUNBUFFERED': '1',
                         'RCUTILS_COLORIZED_OUTPUT': '0', 'RCUTILS_LOGGING_BUFFERED_STREAM': '0'})
        full_env.update(env or {})
        self._log_file = open(self.log_path, 'w') if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, env=full_env, stdout=self._log_file, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors='replace') if self.log_path and self.log_path.exists() else ''

    def stop(self, timeout: float = 30.0) -> int:
        """SIGINT (as Ctrl-C / ros2 launch do), then SIGKILL after ``timeout``; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log_file is not subprocess.DEVNULL:
            self._log_file.close()
        return self.proc.returncode


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (list, tuple)):
        return '[' + ','.join(_param_text(v) for v in value) + ']'
    if isinstance(value, str):
        return value if value else "''"
    return repr(value)
