"""``vpr_node``: the ROS 2 lifecycle node. Camera images in, loop closures and relocalizations out.

A managed node (``rclpy.lifecycle``), as Nav2's: ``configure`` loads the model, builds the engine and
loads the map; ``activate`` subscribes ``image`` (or ``image/compressed``) and ``odom`` and starts
publishing ``~/loop_closure``, ``~/relocalization``, ``~/candidates``, ``~/markers``, ``~/attention``;
``deactivate`` stops both; ``cleanup`` and ``shutdown`` save the map (slam mode,
``map.save_on_shutdown``). With ``autostart`` (default) it configures and activates itself.
``/diagnostics`` and the services ``~/save_map``, ``~/set_mapping``, ``~/clear_map`` work once configured.

The image callback only checks the message and keeps the newest frame; a worker thread runs the
``FramePipeline`` (convert -> encode -> detect) and publishes what it decides.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.logging import get_logger
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float64MultiArray
from visualization_msgs.msg import MarkerArray

from ..errors import BoqVprError, explain
from ..pipeline import FrameOutputs, pose_covariance
from . import messages
from ..inputs.images import FrameRejected
from .convert import ImageConverter
from .diagnostics import Health, pipeline_values, status_of
from .inputs import Inputs
from .node_parameters import NodeParameters
from .odometry import OdometryInput
from .parameters import node_parameters
from .services import MapServices
from .startup import attention_problem
from .stats import PipelineStats, Throttle
from .worker import Worker

try:  # Humble and later
    from rclpy.executors import ExternalShutdownException
except ImportError:  # pragma: no cover
    ExternalShutdownException = KeyboardInterrupt
try:
    from rclpy.signals import SignalHandlerOptions
except ImportError:  # pragma: no cover
    pass

NODE_NAME = 'vpr_node'
SUCCESS, FAILURE = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE


class RosLogHandler(logging.Handler):
    """Forwards the library's Python log records (model loading, engine builds, map I/O) to a ROS logger."""

    def __init__(self, ros_logger) -> None:
        super().__init__(logging.INFO)
        self._logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = f'[{record.name}] {record.getMessage()}'
            # one call per severity: rclpy refuses a call site whose severity changes
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


class VprNode(LifecycleNode):
    """Visual place recognition for a SLAM back end (see the module docstring)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._log = self.get_logger()
        self._lib_handler = RosLogHandler(self._log)
        lib_logger = logging.getLogger('boq_vpr')
        lib_logger.addHandler(self._lib_handler)
        lib_logger.setLevel(logging.INFO)
        lib_logger.propagate = False
        self.params = NodeParameters(self, node_parameters())   # ConfigError on invalid values
        v = self.params.values
        self.stats = PipelineStats(latency_window=v['diagnostics.window'])
        self._throttle = Throttle(v['log_throttle_sec'])
        self._lock = threading.RLock()      # the marker edges (the pipeline has its own lock for the map)
        self.pipeline = None
        self.map_path: Path | None = None
        self.health = Health()              # what /diagnostics reports as problems
        self._worker: Worker | None = None
        self._subs: list[Any] = []
        self.map_services: MapServices | None = None
        self._pubs: list[Any] = []
        self._edges: deque[tuple[tuple, tuple]] = deque(maxlen=v['markers.max_edges'])
        self._edge_frame = ''
        self._processed = 0
        self._position_variance = 1.0
        self.odometry = OdometryInput(v['odom_buffer_size'], v['odom_max_time_diff_sec'])
        self.converter = ImageConverter(v['converter'])
        self.inputs = Inputs(self.stats, self.odometry, self._warn_throttled)
        self._input_group = MutuallyExclusiveCallbackGroup()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # /diagnostics in every state: a node that failed to configure says why
        self.pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.create_timer(v['diagnostics.period_sec'], self._publish_diagnostics,
                          callback_group=MutuallyExclusiveCallbackGroup())

    @property
    def values(self) -> dict[str, Any]:
        return self.params.values

    @property
    def state(self) -> str:
        return self._state_machine.current_state[1]

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._build_pipeline()
        except Exception as err:  # configuration, weights, map or parameter errors: say which, stay unconfigured
            self.health.configure_error = explain(err)
            self._log.fatal(f'cannot start: {self.health.configure_error}')
            self._log.debug(''.join(traceback.format_exception(err)))
            self._release()
            return FAILURE
        v = self.values
        self.pub_loop = self.create_lifecycle_publisher(Float64MultiArray, '~/loop_closure', 10)
        self.pub_reloc = self.create_lifecycle_publisher(PoseWithCovarianceStamped, '~/relocalization', 10)
        self.pub_candidates = self.create_lifecycle_publisher(Float64MultiArray, '~/candidates', 10)
        self.pub_markers = self.create_lifecycle_publisher(MarkerArray, '~/markers', 10)
        self.pub_attention = self.create_lifecycle_publisher(Image, '~/attention', 2)
        self._pubs = [self.pub_loop, self.pub_reloc, self.pub_candidates, self.pub_markers, self.pub_attention]
        self.map_services = MapServices(self, self.pipeline, self.map_path)
        self.health.configure_error = ''
        db, det = self.pipeline.db, self.pipeline.detector
        self._log.info(f'configured: {self.pipeline.encoder.name} ({self.pipeline.encoder.descriptor_dim}-D), map '
                       f'{len(db)} keyframes (all of earlier sessions), mode {det.config.mode}, mapping '
                       f'{v["mapping"]}, converter {self.converter.name}')
        return SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        v = self.values
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=v['qos.depth'],
                         reliability=(ReliabilityPolicy.BEST_EFFORT if v['qos.reliability'] == 'best_effort'
                                      else ReliabilityPolicy.RELIABLE),
                         durability=DurabilityPolicy.VOLATILE)
        self._worker = self.inputs.worker = Worker(self._process, self._frame_failed)
        if v['image_transport'] == 'compressed':
            image = self.create_subscription(CompressedImage, 'image/compressed', self.inputs.on_compressed, qos,
                                             callback_group=self._input_group)
        else:
            image = self.create_subscription(Image, 'image', self.inputs.on_image, qos,
                                             callback_group=self._input_group)
        self._subs = [image]
        if v['use_odom']:
            self._subs.append(self.create_subscription(Odometry, 'odom', self.inputs.on_odom, qos,
                                                       callback_group=self._input_group))
        self._image_topic = image.topic_name
        self._log.info('active: listening on ' + ' and '.join(s.topic_name for s in self._subs))
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        self._log.info('inactive: not subscribed, not publishing')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._save_on_exit('cleanup')
        self._release()
        return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        self._save_on_exit('shutdown')
        self._release()
        return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_input()
        self._release()
        return SUCCESS

    def _stop_input(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        if self._worker is not None:
            self._worker.stop()
            self._worker = self.inputs.worker = None

    def _release(self) -> None:
        """Drop what configure made (publishers, services, model, map)."""
        for pub in self._pubs:
            self.destroy_lifecycle_publisher(pub)
        if self.map_services is not None:
            self.map_services.destroy()
        self._pubs, self.map_services = [], None
        if self.pipeline is not None:
            self.pipeline.db.close()      # its scratch files go now, not at garbage collection
        self.pipeline = None

    def _save_on_exit(self, why: str) -> None:
        if self.pipeline is None or not self.values['map.save_on_shutdown'] or self.map_path is None \
                or self.pipeline.detector.config.mode != 'slam':
            return
        try:
            self.pipeline.db.save(self.map_path)
            self._log.info(f'saved the map on {why}: {len(self.pipeline.db)} keyframes to {self.map_path}')
        except Exception as err:
            self._log.error(f'saving the map on {why} failed: {explain(err)}')

    # ------------------------------------------------------------------ configure
    def _build_pipeline(self) -> None:
        from .startup import build_pipeline
        built = build_pipeline(self.values, self._log)
        self.pipeline, self.map_path, self._position_variance = built
        self.inputs.last_stamp_ns = None
        self._edges.clear()

    # ------------------------------------------------------------------ parameters at run time
    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        new, reason = self.params.proposed(params)
        if new is None:
            return SetParametersResult(successful=False, reason=reason)
        names = {p.name for p in params}
        if 'mapping' in names and new['mapping'] and new['loop_closure.mode'] == 'localization':
            return SetParametersResult(successful=False,
                                       reason='loop_closure.mode is localization: the map is read-only')
        detector_changed = any(n.startswith('loop_closure.') for n in names)
        config = None
        if detector_changed:
            from ..detection import DetectorConfig
            from .parameters import detector_values
            try:
                config = DetectorConfig.from_dict(detector_values(new))
            except BoqVprError as err:
                return SetParametersResult(successful=False, reason=str(err))
        if any(n.startswith('attention.') for n in names) and self.pipeline is not None:
            problem = attention_problem(self.pipeline.encoder.config, new)
            if problem is not None:
                return SetParametersResult(successful=False, reason=problem)
        self.params.values = new
        self._throttle.period_s = new['log_throttle_sec']
        self.odometry.max_time_diff_s = new['odom_max_time_diff_sec']
        if any(n.startswith('attention.') for n in names):
            self.health.attention_error = None   # new settings: try again
        if 'markers.max_edges' in names:
            with self._lock:
                self._edges = deque(self._edges, maxlen=new['markers.max_edges'])
        if self.pipeline is not None:
            with self.pipeline.lock:
                if config is not None:
                    self.pipeline.detector.configure(config)
                    self._log.info('loop-closure filters updated')
                self.pipeline.detector.mapping = bool(new['mapping'])
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ worker
    def _warn_throttled(self, key: str, message: str) -> None:
        suppressed = self._throttle.check(key)
        if suppressed is not None:
            self._log.warning(message + (f' ({suppressed} more since the last report)' if suppressed else ''))

    def _frame_failed(self, err: Exception) -> None:
        if isinstance(err, FrameRejected):
            self.inputs.reject(err.reason, str(err))
            return
        self.stats.count('frames_failed')
        self.health.worker_error = f'{type(err).__name__}: {err}'
        if self._throttle.check('worker:' + type(err).__name__) is not None:
            self._log.error(f'frame failed: {self.health.worker_error}')
            self._log.debug(''.join(traceback.format_exception(err)))

    def _pose_at(self, stamp_ns: int):
        position, orientation, frame = self.odometry.pose_at(stamp_ns)
        if position is None:
            # no odometry near the frame: the keyframe gets no pose, distance keyframing cannot hold it back
            self.stats.count('frames_without_pose')
            self._warn_throttled('no_pose', f'no odometry within {self.values["odom_max_time_diff_sec"]} s of a '
                                 'frame: it is processed without a pose')
        return position, orientation, frame

    def _process(self, item) -> None:
        msg, compressed, t_recv, stamp_ns = item
        t0 = time.perf_counter()
        attention_block = self.values['attention.block'] if self._want_attention() else None
        convert = (lambda: self.converter.compressed(msg)) if compressed else (lambda: self.converter.raw(msg))
        out = self.pipeline.process(convert, stamp_ns, pose=self._pose_at if self.values['use_odom'] else None,
                                    source=self._image_topic, attention_block=attention_block)
        if out.attention_error is not None:
            self._attention_failed(out.attention_error)
        t1 = time.perf_counter()
        self._publish(out, msg.header)
        if out.attention is not None:
            try:
                self._publish_attention(out, msg.header)
            except Exception as err:
                self._attention_failed(err)
        t2 = time.perf_counter()
        self._processed += 1
        self.stats.count('frames_processed')
        if out.result.keyframe_id is not None:
            self.stats.count('keyframes_added')
        self.stats.processed_rate.tick()
        s = out.seconds
        self.stats.latency.add_all({'queue': t0 - t_recv, 'convert': s['convert'], 'encode': s['encode'],
                                    'detect': s['detect'], 'publish': t2 - t1, 'total': t2 - t_recv,
                                    'overhead': (t2 - t_recv) - s['encode'] - (t0 - t_recv)})

    # ------------------------------------------------------------------ outputs
    def _publish(self, out: FrameOutputs, header) -> None:
        """Publish the frame's decision on the outputs, each with its one meaning (README: the back-end contract)."""
        rows = out.rows
        if not rows:
            return
        self.stats.count('candidates_published', len(rows))
        self.pub_candidates.publish(messages.candidates_table(rows))
        if out.loop is not None:
            self.pub_loop.publish(messages.loop_closure(out.loop))
            self.stats.count('loop_closures')
            self._add_edge(out, header)
        if out.relocalization is not None:
            self.stats.count('relocalizations')
            kf = out.relocalization.match_keyframe
            if kf.position is None:
                self.stats.count('relocalizations_without_pose')
                self._warn_throttled('reloc_no_pose', f'relocalization into keyframe {kf.id}, which has no pose: '
                                     'only on ~/candidates (build the map with poses to get ~/relocalization)')
            else:
                cov = pose_covariance(kf.orientation is not None, self._position_variance,
                                      self.values['relocalization.orientation_variance'])
                self.pub_reloc.publish(messages.relocalization(out.relocalization, header.stamp,
                                                               kf.frame_id or self.values['frame_id'], cov))

    def _add_edge(self, out: FrameOutputs, header) -> None:
        """Publish a loop edge on ~/markers when the query and the match have a position in the same frame."""
        match = out.loop.match_keyframe
        if out.position is None or match.position is None or out.frame_id != match.frame_id:
            return
        with self._lock:
            if self._edges and self._edge_frame != match.frame_id:
                self._edges.clear()     # the odometry frame changed: old edges are in another frame
            self._edges.append((tuple(out.position), tuple(match.position)))
            self._edge_frame = match.frame_id
            edges = list(self._edges)
        self.pub_markers.publish(messages.loop_markers(edges, match.frame_id, header.stamp))

    def _want_attention(self) -> bool:
        return (self.values['attention.enable'] and self.health.attention_error is None
                and self.pub_attention.get_subscription_count() > 0
                and self._processed % self.values['attention.every_n'] == 0)

    def _attention_failed(self, err: Exception) -> None:
        """Stop the attention output until its parameters change; frames are processed as usual."""
        self.health.attention_error = f'{type(err).__name__}: {err}'
        self.stats.count('attention_failed')
        self._log.error(f'~/attention turned off until an attention.* parameter changes: '
                        f'{self.health.attention_error}')

    def _publish_attention(self, out: FrameOutputs, header) -> None:
        from .attention import attention_overlay
        img = attention_overlay(out.image, out.attention, out.attention_grid, self.values['attention.queries'],
                                self.values['attention.alpha'])
        self.pub_attention.publish(messages.rgb_image(img, header))

    # ------------------------------------------------------------------ diagnostics
    def diagnostics_values(self) -> dict[str, str]:
        """Return the key/values of the node's ``/diagnostics`` status."""
        return pipeline_values(self.state, self.values, self.stats, self.health, self.pipeline, self.converter.name,
                               self.map_path)

    def _publish_diagnostics(self) -> None:
        try:
            values = self.diagnostics_values()
            worker = self._worker
            level, message = status_of(values, self.health, worker is not None and worker.is_alive())
            self.pub_diag.publish(messages.diagnostics(f'{self.get_fully_qualified_name()}: pipeline',
                                                       values.get('backend', '') + ':' + values.get('device', ''),
                                                       level, message, values, self.get_clock().now().to_msg()))
        except Exception as err:  # diagnostics must never stop the executor
            if self._throttle.check('diagnostics') is not None:
                self._log.error(f'diagnostics failed: {type(err).__name__}: {err}')

    def clear_map(self) -> int:
        """Empty the map and start a new session (``~/clear_map``); the number of keyframes removed."""
        with self.pipeline.lock, self._lock:
            n = len(self.pipeline.db)
            self.pipeline.db.clear()
            self.pipeline.detector.new_session()
            self._edges.clear()
            self.inputs.last_stamp_ns = None
            self.odometry.clear()    # a time jump: old odometry would reject every new message
        return n

    # ------------------------------------------------------------------ process exit
    def finish(self) -> None:
        """Shut down (stop the worker, save the map when configured), also after Ctrl-C."""
        # A second Ctrl-C or the launch system's SIGTERM must not cut the save short (the previous
        # map would survive, but this run's keyframes would be lost); SIGKILL still ends it.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.state in ('unconfigured', 'inactive', 'active'):
            self.trigger_shutdown()
        else:    # stuck in a transition (Ctrl-C during configure): release what there is
            self._stop_input()
            self._release()
        logging.getLogger('boq_vpr').removeHandler(self._lib_handler)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``vpr_node`` (``ros2 run boq_vpr vpr_node``).

    Exit status 1 when it cannot start with ``autostart`` (without it, a failed configure leaves the
    node unconfigured and running).
    """
    # Our own SIGINT/SIGTERM handling: the worker is stopped and the map saved while the ROS context
    # is still valid (rclpy's handlers would shut the context down first).
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except (TypeError, NameError):  # pragma: no cover - distributions without the option
        rclpy.init(args=args)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    node = None
    executor = MultiThreadedExecutor(num_threads=3)
    try:
        node = VprNode()
        executor.add_node(node)
        if node.values['autostart']:
            if node.trigger_configure() != SUCCESS:
                return 1
            if node.trigger_activate() != SUCCESS:
                get_logger(NODE_NAME).fatal('cannot start: activation failed')
                return 1
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as err:  # invalid parameters at construction: say which and stop
        get_logger(NODE_NAME).fatal(f'cannot start: {explain(err)}')
        return 1
    finally:
        if node is not None:
            node.finish()
        executor.shutdown(timeout_sec=1.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
