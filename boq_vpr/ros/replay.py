"""Replay a bag over DDS (rclpy) at its recorded rate times a factor.

Optionally publish ``/clock``, and record chosen topics (e.g. the node's outputs) into a new bag
while it plays.

Messages are published as the serialized bytes stored in the bag (ROS 1 bags are converted to
ROS 2 CDR first), so nothing is re-encoded. Bags are read with ``boq_vpr.inputs.bags`` and written with
``boq_vpr.inputs.bag_writer``.
"""
from __future__ import annotations

import importlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from ..inputs import bags
from ..inputs.bag_writer import BagWriter
from ..errors import BagError, ConfigError
from ..values import NS_PER_S, ns_to_stamp

log = logging.getLogger(__name__)

RELIABILITY = ('reliable', 'best_effort')


def message_class(msgtype: str) -> type:
    """'sensor_msgs/msg/Image' -> the rclpy message class; ``BagError`` naming the missing package."""
    pkg, _, name = msgtype.partition('/msg/')
    if not name:
        raise BagError(f'{msgtype!r} is not a message type (pkg/msg/Name)')
    try:
        return getattr(importlib.import_module(f'{pkg}.msg'), name)
    except (ImportError, AttributeError) as err:
        raise BagError(f'message type {msgtype} is not available in this Python environment '
                       f'(install the {pkg} package of your ROS distribution)') from err


def parse_remaps(items: Sequence[str]) -> dict[str, str]:
    """['/a:=/b', ...] -> {'/a': '/b'}."""
    out = {}
    for item in items:
        src, sep, dst = item.partition(':=')
        if not sep or not src or not dst:
            raise ConfigError(f'remap expects FROM:=TO, got {item!r}')
        out[src] = dst
    return out


@dataclass
class ReplayReport:
    """What a replay did.

    Messages per topic, wall and bag duration, lateness against the schedule, topics left out, and
    what was recorded.
    """

    bag: str
    rate: float
    published: dict[str, int] = field(default_factory=dict)
    skipped_topics: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0
    bag_s: float = 0.0
    late_ms_mean: float = 0.0
    late_ms_max: float = 0.0
    clock_messages: int = 0
    subscribers: dict[str, int] = field(default_factory=dict)
    recorded: dict[str, int] = field(default_factory=dict)
    record_path: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class _Recorder:
    """Raw subscriptions whose messages are written, as received, into a new bag.

    The bag is written by one thread of its own (SQLite objects stay in the thread that made them).
    """

    def __init__(self, node: Node, path: Path, topics: Sequence[str], storage: str, type_timeout_s: float,
                 types: dict[str, str]) -> None:
        self.node = node
        self.path = path
        self.counts: dict[str, int] = {t: 0 for t in topics}
        self.subs = []
        self.last_ns = time.monotonic_ns()
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue()
        self._opened = threading.Event()
        self._thread = threading.Thread(target=self._write_loop, args=(path, storage), name='bag_recorder',
                                        daemon=True)
        self._thread.start()
        self._opened.wait(30.0)
        if self.error is not None:
            raise self.error
        try:
            self._subscribe(node, topics, types, type_timeout_s)
        except BaseException:
            self.close()   # the bag is finished (metadata written), not left half-open
            raise

    def _subscribe(self, node: Node, topics: Sequence[str], types: dict[str, str], type_timeout_s: float) -> None:
        deadline = time.monotonic() + type_timeout_s
        pending = [t for t in topics if t not in types]
        while pending and time.monotonic() < deadline:
            known = dict(node.get_topic_names_and_types())
            for t in list(pending):
                if known.get(t):
                    types[t] = known[t][0]
                    pending.remove(t)
            if pending:
                time.sleep(0.1)
        if pending:
            log.warning('recording: no publisher seen for %s within %.0f s; give the type as TOPIC:TYPE',
                        ', '.join(pending), type_timeout_s)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        for topic in topics:
            if topic not in types:
                continue
            msgtype = types[topic]
            cls = message_class(msgtype)
            self.subs.append(node.create_subscription(cls, topic, self._callback(topic, msgtype), qos, raw=True))
            log.info('recording %s (%s)', topic, msgtype)

    def _write_loop(self, path: Path, storage: str) -> None:
        try:
            writer = BagWriter(path, storage=storage)
            writer.open()
        except BaseException as err:  # reported to the constructor
            self.error = err
            self._opened.set()
            return
        self._opened.set()
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    break
                topic, msgtype, stamp, data = item
                try:
                    writer.write_raw(topic, msgtype, stamp, data)
                    self.counts[topic] += 1
                except Exception as err:  # keep recording the other messages
                    self.error = err
                    log.error('recording %s failed: %s', topic, err)
        finally:
            writer.close()

    def _callback(self, topic: str, msgtype: str):
        def cb(data: bytes) -> None:
            self._queue.put((topic, msgtype, time.time_ns(), bytes(data)))
            self.last_ns = time.monotonic_ns()
        return cb

    def close(self) -> None:
        for sub in self.subs:
            self.node.destroy_subscription(sub)
        self.subs = []
        self._queue.put(None)
        self._thread.join(timeout=60.0)


class BagPlayer:
    """Publishes the messages of ``bag`` (all topics, or ``topics``) over DDS.

    ``rate``: speed factor on the recorded timing (2.0 = twice as fast); ``remap``: topic renames;
    ``clock``: also publish ``/clock`` (rosgraph_msgs/Clock, the bag time) at ``clock_hz``;
    ``wait_subscribers_s``: before playing, wait up to this long for a subscriber on every
    published topic; ``record``: topics to record into ``record_path`` while playing (types taken
    from the ROS graph, or given as ``TOPIC:pkg/msg/Type``), kept open ``linger_s`` after the last
    message until nothing arrived for ``quiet_s``.
    """

    def __init__(self, bag: str | Path, topics: Sequence[str] | None = None, rate: float = 1.0,
                 remap: dict[str, str] | None = None, clock: bool = False, clock_hz: float = 50.0,
                 reliability: str = 'reliable', depth: int = 10, domain_id: int | None = None,
                 node_name: str = 'boq_vpr_replay', wait_subscribers_s: float = 0.0,
                 record: Sequence[str] = (), record_path: str | Path | None = None, record_storage: str = 'sqlite3',
                 linger_s: float = 5.0, quiet_s: float = 1.0, start_s: float = 0.0,
                 duration_s: float | None = None) -> None:
        if not rate > 0:
            raise ConfigError(f'rate must be > 0, got {rate}')
        if reliability not in RELIABILITY:
            raise ConfigError(f'reliability must be one of {", ".join(RELIABILITY)}, got {reliability!r}')
        if record and record_path is None:
            raise ConfigError('recording topics needs an output bag path')
        self.bag = Path(bag)
        self.summaries = bags.list_topics(self.bag)
        missing = [t for t in (topics or []) if t not in self.summaries]
        if missing:
            raise BagError(f'{self.bag}: no topic {", ".join(missing)}. The bag has: '
                           + '; '.join(str(t) for t in self.summaries.values()))
        self.topics = list(topics) if topics else list(self.summaries)
        self.rate = float(rate)
        self.remap = dict(remap or {})
        self.clock = clock
        self.clock_hz = float(clock_hz)
        self.qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(depth),
                              reliability=(ReliabilityPolicy.RELIABLE if reliability == 'reliable'
                                           else ReliabilityPolicy.BEST_EFFORT),
                              durability=DurabilityPolicy.VOLATILE)
        self.domain_id = domain_id
        self.node_name = node_name
        self.wait_subscribers_s = float(wait_subscribers_s)
        self.record_types: dict[str, str] = {}
        self.record_topics: list[str] = []
        for item in record:
            topic, sep, msgtype = item.partition(':')
            self.record_topics.append(topic)
            if sep:
                self.record_types[topic] = msgtype
        self.record_path = Path(record_path) if record_path is not None else None
        self.record_storage = record_storage
        self.linger_s = float(linger_s)
        self.quiet_s = float(quiet_s)
        self.start_ns = int(start_s * NS_PER_S)
        self.duration_ns = int(duration_s * NS_PER_S) if duration_s is not None else None
        self._stop = threading.Event()

    def stop(self) -> None:
        """Stop playing (from another thread or a signal handler)."""
        self._stop.set()

    def _sleep_until(self, wall_target: float, clock_pub, bag_t0: int, wall_t0: float, report: ReplayReport) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= wall_target:
                return
            step = wall_target - now
            if clock_pub is not None:
                self._publish_clock(clock_pub, bag_t0 + int((now - wall_t0) * self.rate * NS_PER_S), report)
                step = min(step, 1.0 / self.clock_hz)
            time.sleep(min(step, 0.05))

    @staticmethod
    def _publish_clock(pub, bag_ns: int, report: ReplayReport) -> None:
        from rosgraph_msgs.msg import Clock
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = ns_to_stamp(bag_ns)
        pub.publish(msg)
        report.clock_messages += 1

    def run(self) -> ReplayReport:
        """Play the bag once; returns what was published (and recorded)."""
        report = ReplayReport(str(self.bag), self.rate)
        context = Context()
        kwargs = {'domain_id': int(self.domain_id)} if self.domain_id is not None else {}
        rclpy.init(context=context, **kwargs)
        node = Node(self.node_name, context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        spinner = threading.Thread(target=self._spin, args=(executor,), daemon=True)
        spinner.start()
        recorder = None
        try:
            publishers: dict[str, Any] = {}
            for topic in self.topics:
                msgtype = self.summaries[topic].msgtype
                try:
                    cls = message_class(msgtype)
                except BagError as err:
                    log.warning('%s: not published: %s', topic, err)
                    report.skipped_topics[topic] = str(err)
                    continue
                publishers[topic] = node.create_publisher(cls, self.remap.get(topic, topic), self.qos)
            if not publishers:
                raise BagError(f'{self.bag}: none of the topics can be published ({", ".join(self.topics)})')
            clock_pub = None
            if self.clock:
                from rosgraph_msgs.msg import Clock
                clock_pub = node.create_publisher(Clock, '/clock', QoSProfile(depth=10))
            if self.record_topics:
                recorder = _Recorder(node, self.record_path, self.record_topics, self.record_storage,
                                     max(self.wait_subscribers_s, 2.0), self.record_types)
            def others(topic: str) -> int:   # subscribers other than our own recorder
                infos = node.get_subscriptions_info_by_topic(node.resolve_topic_name(self.remap.get(topic, topic)))
                return sum(1 for i in infos if not (i.node_name == node.get_name()
                                                    and i.node_namespace == node.get_namespace()))
            if self.wait_subscribers_s > 0:
                end = time.monotonic() + self.wait_subscribers_s
                while time.monotonic() < end and not all(others(t) > 0 for t in publishers):
                    time.sleep(0.1)
            report.subscribers = {self.remap.get(t, t): others(t) for t in publishers}
            lonely = [t for t, n in report.subscribers.items() if n == 0]
            if lonely:
                log.warning('no subscriber on %s; those messages go nowhere', ', '.join(lonely))
            late = []
            bag_t0 = wall_t0 = None
            for topic, msgtype, bag_ns, data in bags.iter_raw_messages(self.bag, list(publishers)):
                if self._stop.is_set():
                    break
                if bag_t0 is None:
                    bag_t0 = bag_ns + self.start_ns
                    wall_t0 = time.monotonic()
                    if clock_pub is not None:
                        self._publish_clock(clock_pub, bag_t0, report)
                if bag_ns < bag_t0:
                    continue
                if self.duration_ns is not None and bag_ns - bag_t0 > self.duration_ns:
                    break
                target = wall_t0 + (bag_ns - bag_t0) / NS_PER_S / self.rate
                self._sleep_until(target, clock_pub, bag_t0, wall_t0, report)
                late.append(max(0.0, time.monotonic() - target) * 1e3)
                if clock_pub is not None:
                    self._publish_clock(clock_pub, bag_ns, report)
                publishers[topic].publish(data)
                report.published[topic] = report.published.get(topic, 0) + 1
                report.bag_s = (bag_ns - bag_t0) / NS_PER_S
            report.wall_s = time.monotonic() - wall_t0 if wall_t0 is not None else 0.0
            report.late_ms_mean = float(sum(late) / len(late)) if late else 0.0
            report.late_ms_max = float(max(late)) if late else 0.0
            if recorder is not None:
                end = time.monotonic() + self.linger_s
                while time.monotonic() < end and not self._stop.is_set():
                    if (time.monotonic_ns() - recorder.last_ns) / NS_PER_S >= self.quiet_s:
                        break
                    time.sleep(0.05)
        finally:
            if recorder is not None:
                recorder.close()
                report.recorded = dict(recorder.counts)
                report.record_path = str(self.record_path)
            executor.shutdown(timeout_sec=1.0)
            node.destroy_node()
            rclpy.try_shutdown(context=context)
            spinner.join(timeout=5.0)
        return report

    @staticmethod
    def _spin(executor: SingleThreadedExecutor) -> None:
        try:
            executor.spin()
        except Exception as err:  # the context shut down while spinning, or a callback failed
            if rclpy.ok(context=executor.context):
                log.error('replay executor stopped: %s: %s', type(err).__name__, err)
