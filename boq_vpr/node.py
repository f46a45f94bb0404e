"""``vpr_node``: the ROS 2 node. Camera images in, visual loop closures out.

Subscribes ``image`` (sensor_msgs/Image) or ``image/compressed`` (sensor_msgs/CompressedImage) and
optionally ``odom`` (nav_msgs/Odometry); publishes ``~/loop_closure``, ``~/candidates``,
``~/match_pose``, ``~/markers``, ``~/attention`` and ``/diagnostics``; serves ``~/save_map``,
``~/set_mapping`` and ``~/clear_map``. The image callback only checks the message and keeps the
newest frame; a worker thread converts, encodes (``Encoder``), runs the ``LoopClosureDetector`` over
the ``MapDatabase`` and publishes. Frames replaced before the worker took them are counted as
dropped, malformed ones as rejected (per reason), and both are reported on ``/diagnostics``.
"""
from __future__ import annotations

import bisect
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import ColorRGBA, Float64MultiArray, MultiArrayDimension
from std_srvs.srv import SetBool, Trigger
from visualization_msgs.msg import Marker, MarkerArray

from .errors import BoqVprError, ConfigError
from .loop_closure import CANDIDATE_COLUMNS
from .models.checkpoint import RANDOM_WEIGHTS, resolve_weights
from .ros.convert import NS_PER_S, FrameRejected, ImageConverter, stamp_to_ns
from .ros.parameters import ParamSpec, detector_values, map_index_options, node_parameters, validate
from .ros.stats import PipelineStats, Throttle

try:  # Humble and later
    from rclpy.executors import ExternalShutdownException
except ImportError:  # pragma: no cover
    ExternalShutdownException = KeyboardInterrupt
try:
    from rclpy.signals import SignalHandlerOptions
except ImportError:  # pragma: no cover
    pass

NODE_NAME = 'vpr_node'
WARN_WINDOW_S = 10.0   # /diagnostics reports WARN while frames were rejected within this window


# ----------------------------------------------------------------------------------------------
# helpers

class RosLogHandler(logging.Handler):
    """Forwards the library's Python log records (model loading, engine builds, map I/O) to a ROS logger."""

    def __init__(self, ros_logger) -> None:
        super().__init__(logging.INFO)
        self._logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f'[{record.name}] {record.getMessage()}'
            if record.levelno >= logging.ERROR:
                self._logger.error(text)
            elif record.levelno >= logging.WARNING:
                self._logger.warning(text)
            elif record.levelno >= logging.INFO:
                self._logger.info(text)
            else:
                self._logger.debug(text)
        except Exception:  # logging must never take the node down
            self.handleError(record)


class FrameSlot:
    """Holds the newest frame for the worker; putting a frame over an untaken one drops the old one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._closed = False

    def put(self, item: Any) -> bool:
        """Store ``item``; True when it replaced a frame the worker had not taken (a drop)."""
        with self._cond:
            dropped = self._item is not None
            self._item = item
            self._cond.notify()
            return dropped

    def take(self, timeout: float) -> Any:
        """The newest frame, or None after ``timeout`` seconds or once closed."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    d = ParameterDescriptor(description=spec.description, additional_constraints=spec.constraints(),
                            read_only=spec.read_only)
    if spec.range is not None and spec.kind == 'int':
        d.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=0)]
    elif spec.range is not None and spec.kind == 'float':
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]), to_value=float(spec.range[1]),
                                                     step=0.0)]
    return d


def _stamp_sec(stamp_ns: int) -> float:
    return stamp_ns / NS_PER_S


def _finite(values) -> bool:
    return all(math.isfinite(v) for v in values)


# ----------------------------------------------------------------------------------------------
# the node

class VprNode(Node):
    """Visual place recognition loop closures for a SLAM back end (see the module docstring)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._log = self.get_logger()
        self._lib_handler = RosLogHandler(self._log)
        lib_logger = logging.getLogger('boq_vpr')
        lib_logger.addHandler(self._lib_handler)
        lib_logger.setLevel(logging.INFO)
        lib_logger.propagate = False

        self._specs = {s.name: s for s in node_parameters()}
        self._values: dict[str, Any] = {}
        self._lock = threading.RLock()     # guards the detector, the map and the pose buffer
        self._declare_parameters()
        v = self._values
        self.stats = PipelineStats(latency_window=v['diagnostics.window'])
        self._throttle = Throttle(v['log_throttle_sec'])
        self._mapping = bool(v['mapping'])
        self._last_stamp_ns: int | None = None
        self._odom: deque[tuple[int, tuple, tuple, str]] = deque(maxlen=v['odom_buffer_size'])
        self._odom_stamps: deque[int] = deque(maxlen=v['odom_buffer_size'])
        # its own lock: the odometry callback must never wait for a frame being processed
        self._odom_lock = threading.Lock()
        self._edges: deque[tuple[tuple, tuple]] = deque(maxlen=v['markers.max_edges'])
        self._edge_frame = ''
        self._processed = 0
        self._worker_error = ''
        self._attention_backend = None
        self._attention_error: str | None = None   # set when attention failed; cleared by new attention.* values
        self._problem_count = 0
        self._problem_time: float | None = None
        self.converter = ImageConverter(v['converter'])

        self._build_pipeline()

        # subscriptions, publishers, services, timers
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=v['qos.depth'],
                         reliability=(ReliabilityPolicy.BEST_EFFORT if v['qos.reliability'] == 'best_effort'
                                      else ReliabilityPolicy.RELIABLE),
                         durability=DurabilityPolicy.VOLATILE)
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._service_group = MutuallyExclusiveCallbackGroup()
        self._timer_group = MutuallyExclusiveCallbackGroup()
        if v['image_transport'] == 'compressed':
            self._image_sub = self.create_subscription(CompressedImage, 'image/compressed', self._on_compressed, qos,
                                                       callback_group=self._input_group)
        else:
            self._image_sub = self.create_subscription(Image, 'image', self._on_image, qos,
                                                       callback_group=self._input_group)
        self._odom_sub = (self.create_subscription(Odometry, 'odom', self._on_odom, qos,
                                                   callback_group=self._input_group) if v['use_odom'] else None)
        self.pub_loop = self.create_publisher(Float64MultiArray, '~/loop_closure', 10)
        self.pub_candidates = self.create_publisher(Float64MultiArray, '~/candidates', 10)
        self.pub_pose = self.create_publisher(PoseWithCovarianceStamped, '~/match_pose', 10)
        self.pub_markers = self.create_publisher(MarkerArray, '~/markers', 10)
        self.pub_attention = self.create_publisher(Image, '~/attention', 2)
        self.pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.create_service(Trigger, '~/save_map', self._srv_save_map, callback_group=self._service_group)
        self.create_service(SetBool, '~/set_mapping', self._srv_set_mapping, callback_group=self._service_group)
        self.create_service(Trigger, '~/clear_map', self._srv_clear_map, callback_group=self._service_group)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_timer(v['diagnostics.period_sec'], self._publish_diagnostics, callback_group=self._timer_group)

        self._slot = FrameSlot()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._worker_loop, name='vpr_worker', daemon=True)
        self._worker.start()
        topic = self._image_sub.topic_name
        self._log.info(f'ready: {self.encoder.name} ({self.encoder.descriptor_dim}-D, '
                       f'{self.encoder.backend.describe().get("device", "?")}), map {len(self.db)} keyframes, '
                       f'mode {self.detector_config.mode}, mapping {self._mapping}, converter {self.converter.name}; '
                       f'listening on {topic}' + (f' and {self._odom_sub.topic_name}' if self._odom_sub else ''))

    # ------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> None:
        for spec in self._specs.values():
            param = self.declare_parameter(spec.name, spec.default, _descriptor(spec))
            self._values[spec.name] = param.value
        problems = [r for name, value in self._values.items()
                    if (r := validate(self._specs[name], value)) is not None]
        if problems:
            raise ConfigError('invalid parameters: ' + '; '.join(problems))
        self.detector_config = self._make_detector_config(self._values)

    def _make_detector_config(self, values: dict[str, Any]):
        from .loop_closure import DetectorConfig
        return DetectorConfig.from_dict(detector_values(values))

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        new = dict(self._values)
        for p in params:
            spec = self._specs.get(p.name)
            if spec is None:   # rclpy's own parameters (use_sim_time, QoS overrides)
                continue
            if spec.read_only and p.value != self._values.get(p.name):
                return SetParametersResult(successful=False, reason=f'{p.name} is read-only after start-up')
            reason = validate(spec, p.value)
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
            new[p.name] = p.value
        if any(p.name == 'mapping' for p in params) and new['mapping'] and \
                getattr(self, 'detector_config', None) is not None and self.detector_config.mode == 'localization':
            return SetParametersResult(successful=False, reason='loop_closure.mode is localization: the map is read-only')
        detector_changed = any(p.name.startswith('loop_closure.') for p in params)
        if detector_changed:
            try:
                config = self._make_detector_config(new)
            except BoqVprError as err:
                return SetParametersResult(successful=False, reason=str(err))
        if any(p.name.startswith('attention.') for p in params) and hasattr(self, 'encoder'):
            problem = self._attention_problem(new)
            if problem is not None:
                return SetParametersResult(successful=False, reason=problem)
        # apply
        self._values = new
        if not hasattr(self, 'detector'):
            return SetParametersResult(successful=True)
        if detector_changed:
            self._replace_detector(config)
        self._throttle.period_s = new['log_throttle_sec']
        if any(p.name == 'mapping' for p in params):
            self._set_mapping(bool(new['mapping']))
        if any(p.name.startswith('attention.') for p in params):
            self._attention_error = None   # new settings: try again
        if any(p.name == 'markers.max_edges' for p in params):
            with self._lock:
                self._edges = deque(self._edges, maxlen=new['markers.max_edges'])
        return SetParametersResult(successful=True)

    def _attention_problem(self, values: dict) -> str | None:
        """Why the attention.* values do not fit the loaded model, or None."""
        cfg = self.encoder.config
        bad = [q for q in values['attention.queries'] if not -cfg.num_queries <= q < cfg.num_queries]
        if bad:
            return f'attention.queries {bad}: the model has {cfg.num_queries} queries'
        block = values['attention.block']
        if not -cfg.num_layers <= block < cfg.num_layers:
            return f'attention.block {block}: the model has {cfg.num_layers} BoQ blocks (-1 is the last)'
        return None

    # ------------------------------------------------------------------ start-up
    def _build_pipeline(self) -> None:
        import torch
        from .encoder import Encoder
        from .loop_closure import LoopClosureDetector
        from .map_db import MANIFEST, MapDatabase, foreign_entries

        v = self._values
        # map path first: fail before a long model load or engine build
        path = Path(v['map.path']).expanduser() if v['map.path'] else None
        mode = self.detector_config.mode
        if path is not None and path.exists() and not (path / MANIFEST).is_file() and \
                (not path.is_dir() or foreign_entries(path)):
            raise ConfigError(f'map.path {path} exists but is not a map directory (no {MANIFEST}); '
                              'choose a new or empty directory')
        if mode == 'localization' and (path is None or not (path / MANIFEST).is_file()):
            raise ConfigError(f'loop_closure.mode is localization but map.path {str(path or "")!r} holds no map; '
                              'build one first (slam mode, or `boq-vpr build-map`) and point map.path at it')
        if v['encoder.num_threads'] > 0:
            torch.set_num_threads(v['encoder.num_threads'])
        size = None
        if v['model.image_height'] or v['model.image_width']:
            if not (v['model.image_height'] and v['model.image_width']):
                raise ConfigError('set both model.image_height and model.image_width, or neither')
            size = (v['model.image_height'], v['model.image_width'])
        options: dict[str, Any] = {}
        if v['encoder.onnx_path']:
            options['onnx_path'] = v['encoder.onnx_path']
        if v['encoder.calibration']:
            options['calibration'] = v['encoder.calibration']
        if v['encoder.num_threads'] > 0:
            options['threads'] = v['encoder.num_threads']
        if v['encoder.cache_dir']:
            from .backends.engine_cache import CACHE_ENV
            os.environ[CACHE_ENV] = str(Path(v['encoder.cache_dir']).expanduser())
        weights = resolve_weights(v['model.name'], v['model.weights'])   # empty: the shipped weights, if any
        self._log.info(f'loading model {v["model.name"]} (weights: {weights or "none, random"}) on backend '
                       f'{v["encoder.backend"]}/{v["encoder.device"]}/{v["encoder.precision"]} '
                       '(building a TensorRT engine can take minutes the first time)...')
        t0 = time.monotonic()
        self.encoder = Encoder(v['model.name'], weights=weights if weights is not None else RANDOM_WEIGHTS,
                               backend=v['encoder.backend'],
                               device=v['encoder.device'], batch_size=1, image_size=size,
                               resize_mode=v['model.resize_mode'], precision=v['encoder.precision'], **options)
        if weights is None:
            self._log.warning(f'model {v["model.name"]} has no weights (model.weights is {v["model.weights"]!r} and none '
                              'ship with it): the network has random weights, so no threshold (fixed or calibrated) '
                              'can tell places apart and its loop closures mean nothing; set model.weights to a '
                              'trained checkpoint, or use model.name resnet18_nordland')
        problem = self._attention_problem(v)
        if problem is not None:
            raise ConfigError(f'{problem} (model {self.encoder.config.name})')
        if v['encoder.warmup']:
            h, w = self.encoder.config.image_size
            self.encoder.encode(np.zeros((h, w, 3), np.uint8))
        self._log.info(f'encoder ready in {time.monotonic() - t0:.1f} s: {self.encoder.describe()}')

        if path is not None and (path / MANIFEST).is_file():
            self._log.info(f'loading map {path}...')
            self.db = MapDatabase.load(path, fingerprint=self.encoder.fingerprint,
                                       descriptor_dim=self.encoder.descriptor_dim)
            self._log.info(f'map {path}: {len(self.db)} keyframes, {self.db.index_type} index, '
                           f'sessions {self.db.sessions()}')
        else:
            self.db = MapDatabase(self.encoder.descriptor_dim, self.encoder.fingerprint, v['map.index_type'],
                                  **map_index_options(v, v['map.index_type']))
            self._log.info(f'new empty map ({self.db.index_type} index)' +
                           (f', saved to {path}' if path is not None else ', in memory (map.path is empty)'))
        self.map_path = path
        self.detector = LoopClosureDetector(self.db, self.detector_config)
        self.detector.mapping = self._mapping
        for text in self.detector_config.warnings():
            self._log.warning(f'loop_closure: {text}')

    # ------------------------------------------------------------------ detector control
    def _replace_detector(self, config) -> None:
        """New filter settings on the same detector (the map and the current session continue)."""
        with self._lock:
            self.detector.configure(config)
            self.detector_config = config
        self._log.info('loop-closure filters updated')

    def _set_mapping(self, enable: bool) -> None:
        """slam mode: whether new keyframes join the map (off: frames are only matched, still outside
        the exclusion window)."""
        with self._lock:
            self._mapping = enable
            self._values['mapping'] = enable
            self.detector.mapping = enable

    # ------------------------------------------------------------------ input callbacks (never block)
    def _accept_header(self, msg, kind: str) -> int | None:
        self.stats.count('frames_received')
        self.stats.input_rate.tick()
        try:
            stamp_ns = stamp_to_ns(msg.header.stamp)
        except FrameRejected as err:
            self._reject(err.reason, str(err))
            return None
        last = self._last_stamp_ns
        if last is not None and stamp_ns <= last:
            self._reject('stamp_out_of_order', f'{kind} stamp {_stamp_sec(stamp_ns):.9f} is not after the previous '
                         f'frame\'s {_stamp_sec(last):.9f}; frame ignored (restart or ~/clear_map after a time jump)')
            return None
        return stamp_ns

    def _on_image(self, msg: Image) -> None:
        t = time.perf_counter()
        try:
            stamp_ns = self._accept_header(msg, 'image')
            if stamp_ns is None:
                return
            from .ros.convert import check_raw
            check_raw(msg)
        except FrameRejected as err:
            self._reject(err.reason, str(err))
            return
        except Exception as err:  # a message this node does not understand at all
            self._reject('malformed', f'{type(err).__name__}: {err}')
            return
        self._enqueue(msg, False, t, stamp_ns)

    def _on_compressed(self, msg: CompressedImage) -> None:
        t = time.perf_counter()
        try:
            stamp_ns = self._accept_header(msg, 'compressed image')
        except Exception as err:
            self._reject('malformed', f'{type(err).__name__}: {err}')
            return
        if stamp_ns is None:
            return
        if len(msg.data) == 0:
            self._reject('empty_image', f'compressed image ({msg.format!r}) has no data')
            return
        self._enqueue(msg, True, t, stamp_ns)

    def _enqueue(self, msg, compressed: bool, t_recv: float, stamp_ns: int) -> None:
        self._last_stamp_ns = stamp_ns
        if self._slot.put((msg, compressed, t_recv, stamp_ns)):
            self.stats.count('frames_dropped')

    def _on_odom(self, msg: Odometry) -> None:
        self.stats.count('odom_received')
        try:
            stamp_ns = stamp_to_ns(msg.header.stamp)
            p, q = msg.pose.pose.position, msg.pose.pose.orientation
            position = (float(p.x), float(p.y), float(p.z))
            orientation = (float(q.x), float(q.y), float(q.z), float(q.w))
        except FrameRejected as err:
            self._reject_odom(err.reason, f'odometry: {err}')
            return
        if not _finite(position + orientation):
            self._reject_odom('not_finite', 'odometry pose has NaN or infinite values')
            return
        norm = math.sqrt(sum(c * c for c in orientation))
        if norm < 1e-6:
            self._reject_odom('bad_quaternion', 'odometry orientation is a zero quaternion')
            return
        orientation = tuple(c / norm for c in orientation)
        with self._odom_lock:
            if self._odom_stamps and stamp_ns <= self._odom_stamps[-1]:
                self._reject_odom('stamp_out_of_order', f'odometry stamp {_stamp_sec(stamp_ns):.9f} is not after '
                                  f'the previous {_stamp_sec(self._odom_stamps[-1]):.9f}')
                return
            self._odom.append((stamp_ns, position, orientation, msg.header.frame_id))
            self._odom_stamps.append(stamp_ns)

    def _pose_at(self, stamp_ns: int) -> tuple[tuple | None, tuple | None, str]:
        """The odometry pose nearest in time to ``stamp_ns`` within odom_max_time_diff_sec."""
        with self._odom_lock:
            if not self._odom:
                return None, None, ''
            stamps = self._odom_stamps
            i = bisect.bisect_left(stamps, stamp_ns)
            best = None
            for j in (i - 1, i):
                if 0 <= j < len(stamps) and (best is None or abs(stamps[j] - stamp_ns) < abs(stamps[best] - stamp_ns)):
                    best = j
            if best is None or abs(stamps[best] - stamp_ns) > self._values['odom_max_time_diff_sec'] * NS_PER_S:
                return None, None, ''
            _, position, orientation, frame = self._odom[best]
            return position, orientation, frame

    # ------------------------------------------------------------------ bad input
    def _reject(self, reason: str, message: str) -> None:
        self.stats.reject(reason)
        suppressed = self._throttle.check('image:' + reason)
        if suppressed is not None:
            more = f' ({suppressed} more since the last report)' if suppressed else ''
            self._log.warning(f'rejected frame [{reason}]: {message}{more}')

    def _reject_odom(self, reason: str, message: str) -> None:
        self.stats.count('odom_rejected')
        self.stats.count('odom_rejected.' + reason)
        suppressed = self._throttle.check('odom:' + reason)
        if suppressed is not None:
            more = f' ({suppressed} more since the last report)' if suppressed else ''
            self._log.warning(f'rejected odometry [{reason}]: {message}{more}')

    # ------------------------------------------------------------------ worker
    def _worker_loop(self) -> None:
        while not self._stop.is_set():
            item = self._slot.take(timeout=0.2)
            if item is None:
                continue
            try:
                self._process(*item)
            except Exception as err:  # never let one frame end the worker
                self.stats.count('frames_failed')
                self._worker_error = f'{type(err).__name__}: {err}'
                if self._throttle.check('worker:' + type(err).__name__) is not None:
                    self._log.error(f'frame failed: {self._worker_error}')
                    self._log.debug(''.join(traceback.format_exception(err)))

    def _process(self, msg, compressed: bool, t_recv: float, stamp_ns: int) -> None:
        t0 = time.perf_counter()
        try:
            rgb = self.converter.compressed(msg) if compressed else self.converter.raw(msg)
        except FrameRejected as err:
            self._reject(err.reason, str(err))
            return
        t1 = time.perf_counter()
        attention = None
        if self._want_attention():
            try:
                desc, attention, grid = self._encode_with_attention(rgb)
            except Exception as err:  # the overlay is optional: loop closure goes on without it
                self._attention_failed(err)
        if attention is None:
            desc = self.encoder.encode(rgb)[0]
        t2 = time.perf_counter()
        position, orientation, odom_frame = self._pose_at(stamp_ns) if self._odom_sub is not None else (None, None, '')
        if self._odom_sub is not None and position is None:
            # no odometry within odom_max_time_diff_sec: the keyframe gets no pose and distance-based
            # keyframing cannot hold it back
            self.stats.count('frames_without_pose')
            if self._throttle.check('no_pose') is not None:
                self._log.warning(f'no odometry within {self._values["odom_max_time_diff_sec"]} s of a frame: '
                                  'it is processed without a pose')
        frame_id = odom_frame or self._values['frame_id']
        with self._lock:
            result = self.detector.process(desc, stamp_ns, position=position, orientation=orientation,
                                           frame_id=frame_id, image=rgb, source=self._image_sub.topic_name)
        t3 = time.perf_counter()
        self._publish_result(result, msg.header, stamp_ns, position, frame_id)
        if attention is not None:
            try:
                self._publish_attention(rgb, attention, grid, msg.header)
            except Exception as err:
                self._attention_failed(err)
        t4 = time.perf_counter()
        self._processed += 1
        self.stats.count('frames_processed')
        if result.keyframe_id is not None:
            self.stats.count('keyframes_added')
        self.stats.processed_rate.tick()
        self.stats.latency.add_all({'queue': t0 - t_recv, 'convert': t1 - t0, 'encode': t2 - t1, 'detect': t3 - t2,
                                    'publish': t4 - t3, 'total': t4 - t_recv,
                                    'overhead': (t4 - t_recv) - (t2 - t1) - (t0 - t_recv)})

    # ------------------------------------------------------------------ outputs
    def _publish_result(self, result, header, stamp_ns: int, query_position, frame_id: str) -> None:
        cands = result.candidates
        if not cands:
            return
        self.stats.count('candidates_published', len(cands))
        table = Float64MultiArray()
        n, m = len(cands), len(CANDIDATE_COLUMNS)
        table.layout.dim = [MultiArrayDimension(label='candidates', size=n, stride=n * m),
                            MultiArrayDimension(label=','.join(CANDIDATE_COLUMNS), size=m, stride=m)]
        table.data = [float(x) for c in cands for x in (
            _stamp_sec(c.query_stamp_ns), _stamp_sec(c.match_stamp_ns), c.match_id, c.score, c.rank,
            1.0 if c.verified else 0.0, c.inliers)]
        self.pub_candidates.publish(table)
        top = cands[0]
        self.pub_loop.publish(Float64MultiArray(data=[_stamp_sec(top.query_stamp_ns), _stamp_sec(top.match_stamp_ns)]))
        self.stats.count('loop_closures')
        kf = top.match_keyframe
        if kf.position is not None:
            pose = PoseWithCovarianceStamped()
            pose.header.stamp = header.stamp
            pose.header.frame_id = kf.frame_id or self._values['frame_id']
            pose.pose.pose.position.x, pose.pose.pose.position.y, pose.pose.pose.position.z = map(float, kf.position)
            if kf.orientation is not None:
                o = pose.pose.pose.orientation
                o.x, o.y, o.z, o.w = map(float, kf.orientation)
            pv, ov = self._values['match_pose.position_variance'], self._values['match_pose.orientation_variance']
            cov = np.zeros((6, 6))
            cov[np.diag_indices(3)] = pv
            cov[3 + np.arange(3), 3 + np.arange(3)] = ov
            pose.pose.covariance = [float(x) for x in cov.ravel()]
            self.pub_pose.publish(pose)
            if query_position is not None:
                with self._lock:
                    self._edges.append((tuple(query_position), tuple(kf.position)))
                    self._edge_frame = frame_id or kf.frame_id
                self._publish_markers(header)

    def _publish_markers(self, header) -> None:
        with self._lock:
            edges = list(self._edges)
            frame = self._edge_frame
        lines = Marker()
        lines.header.stamp = header.stamp
        lines.header.frame_id = frame
        lines.ns = 'loop_closures'
        lines.id = 0
        lines.type = Marker.LINE_LIST
        lines.action = Marker.ADD
        lines.pose.orientation.w = 1.0
        lines.scale.x = 0.05
        lines.color = ColorRGBA(r=1.0, g=0.2, b=0.2, a=1.0)
        lines.points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for e in edges for p in e]
        out = MarkerArray(markers=[lines])
        self.pub_markers.publish(out)

    def _want_attention(self) -> bool:
        return (self._values['attention.enable'] and self._attention_error is None
                and self.pub_attention.get_subscription_count() > 0
                and self._processed % self._values['attention.every_n'] == 0)

    def _attention_failed(self, err: Exception) -> None:
        """Stop the attention output until its parameters change; frames are processed as usual."""
        self._attention_error = f'{type(err).__name__}: {err}'
        self.stats.count('attention_failed')
        self._log.error(f'~/attention turned off until an attention.* parameter changes: {self._attention_error}')
        self._log.debug(''.join(traceback.format_exception(err)))

    def _encode_with_attention(self, rgb: np.ndarray):
        """Descriptor and the chosen block's cross-attention ``[Q, h*w]`` of one image."""
        from .encoder import l2_normalize
        backend = self.encoder.backend
        if getattr(backend, 'name', '') != 'torch' or not hasattr(backend, 'attention'):
            if self._attention_backend is None:
                from .backends import make_backend
                self._log.info(f'attention maps need the PyTorch model: loading it next to the '
                               f'{backend.name} backend (CPU)')
                self._attention_backend = make_backend('torch', self.encoder.config, self.encoder.weights, device='cpu')
            attn_backend = self._attention_backend
            desc = self.encoder.encode(rgb)[0]
        else:
            attn_backend, desc = backend, None
        batch = self.encoder.preprocessor.batch([rgb])
        d, attns = attn_backend.attention(batch)
        if desc is None:
            desc = l2_normalize(d)[0]
        block = attns[self._values['attention.block']]
        grid = attn_backend.model.feature_shape(int(batch.shape[-2]), int(batch.shape[-1]))
        return desc, block[0], grid

    def _publish_attention(self, rgb: np.ndarray, attention: np.ndarray, grid, header) -> None:
        from .ros.attention import attention_overlay
        img = attention_overlay(rgb, attention, grid, self._values['attention.queries'], self._values['attention.alpha'])
        msg = Image()
        msg.header = header
        msg.height, msg.width = int(img.shape[0]), int(img.shape[1])
        msg.encoding = 'rgb8'
        msg.is_bigendian = 0
        msg.step = int(img.shape[1] * 3)
        msg.data = img.tobytes()
        self.pub_attention.publish(msg)

    # ------------------------------------------------------------------ diagnostics
    def diagnostics_values(self) -> dict[str, str]:
        counts, rejected = self.stats.snapshot()
        enc = self.encoder.describe()
        out = {
            'backend': str(enc.get('backend', self.encoder.backend.name)),
            'device': str(enc.get('device', '')), 'precision': str(enc.get('precision', '')),
            'model': self.encoder.config.name, 'descriptor_dim': str(self.encoder.descriptor_dim),
            'converter': self.converter.name, 'mode': self.detector_config.mode, 'mapping': str(self._mapping),
            'map_size': str(len(self.db)), 'map_path': str(self.map_path or ''),
            'input_rate_hz': f'{self.stats.input_rate.rate():.2f}',
            'processed_rate_hz': f'{self.stats.processed_rate.rate():.2f}',
        }
        for key in ('frames_received', 'frames_processed', 'frames_dropped', 'rejected', 'frames_failed',
                    'keyframes_added', 'loop_closures', 'candidates_published', 'odom_received', 'odom_rejected',
                    'frames_without_pose', 'attention_failed'):
            out['frames_rejected' if key == 'rejected' else key] = str(counts.get(key, 0))
        for reason, n in sorted(rejected.items()):
            out[f'rejected.{reason}'] = str(n)
        # the decision of every processed frame (they add up to frames_processed)
        for outcome, n in self.detector.outcome_counts.items():
            out[f'outcome.{outcome}'] = str(n)
        for key, n in sorted(counts.items()):
            if key.startswith('odom_rejected.'):
                out[key] = str(n)
        for stage, s in self.stats.latency.summary_ms().items():
            out[f'latency_ms.{stage}.p50'] = f'{s["p50"]:.3f}'
            out[f'latency_ms.{stage}.p99'] = f'{s["p99"]:.3f}'
        if self._worker_error:
            out['last_error'] = self._worker_error
        if self._attention_error:
            out['attention_error'] = self._attention_error
        return out

    def _recent_problems(self, total: int) -> bool:
        """Whether the count of bad frames grew within the last WARN_WINDOW_S seconds."""
        now = time.monotonic()
        if total != self._problem_count:
            self._problem_count, self._problem_time = total, now
        return self._problem_time is not None and now - self._problem_time < WARN_WINDOW_S

    def _publish_diagnostics(self) -> None:
        try:
            self._publish_diagnostics_now()
        except Exception as err:  # diagnostics must never stop the executor
            if self._throttle.check('diagnostics') is not None:
                self._log.error(f'diagnostics failed: {type(err).__name__}: {err}')

    def _publish_diagnostics_now(self) -> None:
        values = self.diagnostics_values()
        status = DiagnosticStatus()
        status.name = f'{self.get_fully_qualified_name()}: pipeline'
        status.hardware_id = values['backend'] + ':' + values['device']
        if not self._worker.is_alive():
            status.level, status.message = DiagnosticStatus.ERROR, 'worker thread stopped'
        elif self._recent_problems(int(values['frames_rejected']) + int(values['frames_failed'])):
            status.level = DiagnosticStatus.WARN
            status.message = (f'frames rejected or failed in the last {WARN_WINDOW_S:.0f} s '
                              f'({values["frames_rejected"]} rejected, {values["frames_failed"]} failed in all); '
                              f'{values["processed_rate_hz"]} Hz processed')
        else:
            status.level = DiagnosticStatus.OK
            status.message = f'{values["processed_rate_hz"]} Hz processed, map {values["map_size"]} keyframes'
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [status]
        self.pub_diag.publish(arr)

    # ------------------------------------------------------------------ services
    def _srv_save_map(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.map_path is None:
            response.success, response.message = False, 'map.path is empty: nowhere to save the map'
            return response
        try:
            self.db.save(self.map_path)
        except Exception as err:  # report to the caller; the node keeps running
            response.success, response.message = False, f'saving the map failed: {type(err).__name__}: {err}'
            self._log.error(response.message)
            return response
        response.success, response.message = True, f'saved {len(self.db)} keyframes to {self.map_path}'
        self._log.info(response.message)
        return response

    def _srv_set_mapping(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        if self.detector_config.mode != 'slam':
            response.success = False
            response.message = 'loop_closure.mode is localization: the map is read-only'
            return response
        self._set_mapping(bool(request.data))
        try:
            self.set_parameters([Parameter('mapping', value=bool(request.data))])
        except Exception:  # the parameter only mirrors the state
            pass
        response.success, response.message = True, f'mapping {"on" if request.data else "off"}'
        self._log.info(response.message)
        return response

    def _srv_clear_map(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.detector_config.mode == 'localization':
            response.success = False
            response.message = ('loop_closure.mode is localization: the map is read-only and is not cleared '
                                 '(restart the node to reset its stamps)')
            return response
        try:
            with self._lock:
                n = len(self.db)
                self.db.clear()
                self.detector.reset()
                self._edges.clear()
                self._last_stamp_ns = None
                with self._odom_lock:    # a time jump: old odometry would reject every new message
                    self._odom.clear()
                    self._odom_stamps.clear()
        except Exception as err:
            response.success, response.message = False, f'clearing the map failed: {type(err).__name__}: {err}'
            self._log.error(response.message)
            return response
        response.success, response.message = True, f'cleared the map ({n} keyframes removed)'
        self._log.info(response.message)
        return response

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        """Stop the worker and save the map when configured (also after the ROS context is gone)."""
        # A second Ctrl-C or the launch system's SIGTERM must not cut the save short (the previous
        # map would survive, but this run's keyframes would be lost); SIGKILL still ends it.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self._stop.set()
        self._slot.close()
        self._worker.join(timeout=30.0)
        if self._values.get('map.save_on_shutdown') and self.map_path is not None \
                and self.detector_config.mode == 'slam':
            try:
                self.db.save(self.map_path)
                self._log.info(f'saved the map on shutdown: {len(self.db)} keyframes to {self.map_path}')
            except Exception as err:
                self._log.error(f'saving the map on shutdown failed: {err}')
        logging.getLogger('boq_vpr').removeHandler(self._lib_handler)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``vpr_node`` (``ros2 run boq_vpr vpr_node``); exit status 1 when it cannot start."""
    # Our own SIGINT/SIGTERM handling: the worker is stopped and the map saved while the ROS context
    # is still valid (rclpy's handlers would shut the context down first).
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except (TypeError, NameError):  # pragma: no cover - distributions without the option
        rclpy.init(args=args)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        node = VprNode()
    except (KeyboardInterrupt, ExternalShutdownException):
        rclpy.try_shutdown()
        return 0
    except Exception as err:  # configuration, weights, map or parameter errors: say what and stop
        what = str(err) if isinstance(err, BoqVprError) else f'{type(err).__name__}: {err}'
        get_logger(NODE_NAME).fatal(f'cannot start: {what}')
        rclpy.try_shutdown()
        return 1
    executor = MultiThreadedExecutor(num_threads=3)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.shutdown()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
