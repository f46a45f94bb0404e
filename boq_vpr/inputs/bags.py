"""Bag input and output with ``rosbags`` (no ROS install needed).

Reads rosbag2 (sqlite3 and mcap, a bag directory or a single ``.db3``/``.mcap`` file) and ROS 1
``.bag`` files: topic listing, image messages (``sensor_msgs/Image`` and ``CompressedImage``)
as ``(stamp_ns, RGB uint8)`` through ``boq_vpr.inputs.images``, and poses (``nav_msgs/Odometry``,
``geometry_msgs/PoseStamped``, ``PoseWithCovarianceStamped``). Writes rosbag2 (sqlite3, mcap)
and ROS 1 bags of images, poses and any standard message. This is the one bag module: the
evaluator, the replay tool, ``make-bag`` and the training data builders all go through it.
"""
from __future__ import annotations

import logging
import sqlite3
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import BagError, ImageError
from .images import decode_to_rgb8, raw_to_rgb8
from ..values import NS_PER_S

log = logging.getLogger(__name__)

STORAGES = ('sqlite3', 'mcap', 'ros1')
IMAGE_FORMATS = ('raw', 'jpeg', 'png')
RAW_IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE = 'sensor_msgs/msg/CompressedImage'
IMAGE_TYPES = (RAW_IMAGE, COMPRESSED_IMAGE)
ODOMETRY = 'nav_msgs/msg/Odometry'
POSE_STAMPED = 'geometry_msgs/msg/PoseStamped'
POSE_COV_STAMPED = 'geometry_msgs/msg/PoseWithCovarianceStamped'
POSE_TYPES = (ODOMETRY, POSE_STAMPED, POSE_COV_STAMPED)
STAMP_SOURCES = ('header', 'bag')


def _typestore(ros1: bool = False):
    from rosbags.typesys import Stores, get_typestore
    if ros1:
        return get_typestore(Stores.ROS1_NOETIC)
    # the newest ROS 2 message definitions this rosbags release knows (older ones lack Kilted)
    name = next(n for n in ('ROS2_KILTED', 'ROS2_JAZZY', 'ROS2_HUMBLE') if hasattr(Stores, n))
    return get_typestore(getattr(Stores, name))


def _read_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean 'this bag is unreadable' (corrupt, truncated, not a bag)."""
    from rosbags.highlevel import AnyReaderError
    from rosbags.rosbag1 import ReaderError as Reader1Error
    from rosbags.rosbag2 import ReaderError as Reader2Error
    from rosbags.serde import SerdeError
    errors: list[type[BaseException]] = [AnyReaderError, Reader1Error, Reader2Error, SerdeError,
                                         sqlite3.DatabaseError, struct.error, EOFError, KeyError,
                                         UnicodeDecodeError]
    try:
        from rosbags.typesys import TypesysError
        errors.append(TypesysError)
    except ImportError:  # pragma: no cover - present in rosbags >= 0.9.20
        pass
    return tuple(errors)


def stamp_to_ns(stamp: Any) -> int:
    """A ROS time (``sec``/``nanosec``) -> integer nanoseconds."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> tuple[int, int]:
    """Integer nanoseconds -> (sec, nanosec)."""
    return int(ns) // NS_PER_S, int(ns) % NS_PER_S


@dataclass(frozen=True)
class TopicSummary:
    """One topic of a bag: name, message type and message count."""

    name: str
    msgtype: str
    count: int

    def __str__(self) -> str:
        return f'{self.name} ({self.msgtype}, {self.count} messages)'


@dataclass
class BagImage:
    """One image message: its index on the topic, stamps (header and bag receive time), RGB pixels
    (None when read with ``decode=False``) and the camera frame."""

    index: int
    stamp_ns: int
    bag_ns: int
    rgb: np.ndarray | None
    frame_id: str = ''


@dataclass
class PoseSample:
    """One pose message: stamp, position (x, y, z), orientation quaternion (x, y, z, w), frame."""

    stamp_ns: int
    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float]
    frame_id: str = ''


@dataclass
class ReadReport:
    """What reading a topic met: counts of messages, frames skipped (with reasons), stamps that
    went backwards or repeated, and frames whose header stamp was zero (bag time used instead)."""

    bag: str = ''
    topic: str = ''
    msgtype: str = ''
    messages: int = 0
    yielded: int = 0
    skipped: list[dict] = field(default_factory=list)
    out_of_order: int = 0
    duplicate_stamps: int = 0
    zero_stamps: int = 0

    def to_dict(self) -> dict:
        return {'bag': self.bag, 'topic': self.topic, 'msgtype': self.msgtype, 'messages': self.messages,
                'frames': self.yielded, 'skipped': len(self.skipped), 'skipped_frames': self.skipped[:100],
                'out_of_order_stamps': self.out_of_order, 'duplicate_stamps': self.duplicate_stamps,
                'zero_header_stamps': self.zero_stamps}


GROUND_TRUTH_SIDECAR = 'ground_truth.csv'


def ground_truth_sidecar(path: str | Path) -> Path:
    """Where ``make-bag`` puts a bag's ground-truth CSV: inside a rosbag2 directory, else next to
    the bag file (``NAME.ground_truth.csv``)."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        return path / GROUND_TRUTH_SIDECAR
    return path.with_name(path.stem + '.' + GROUND_TRUTH_SIDECAR)


def is_bag(path: str | Path) -> bool:
    """Whether ``path`` looks like a bag: a rosbag2 directory (``metadata.yaml``), a ``.db3`` or
    ``.mcap`` file, or a ROS 1 ``.bag`` file."""
    path = Path(path)
    if path.is_dir():
        return (path / 'metadata.yaml').is_file()
    return path.suffix in ('.db3', '.mcap', '.bag')


def _is_ros1(path: Path) -> bool:
    return path.is_file() and path.suffix == '.bag'


@contextmanager
def open_bag(path: str | Path) -> Iterator[Any]:
    """An open ``rosbags.highlevel.AnyReader`` for a rosbag2 directory/file or a ROS 1 bag; errors
    become ``BagError`` naming the bag."""
    from rosbags.highlevel import AnyReader
    path = Path(path)
    if not path.exists():
        raise BagError(f'{path}: no such bag (give a rosbag2 directory, a .db3/.mcap file or a ROS 1 .bag)')
    try:
        reader = AnyReader([path], default_typestore=_typestore(_is_ros1(path)))
        reader.open()
    except _read_errors() as err:
        raise BagError(f'{path}: cannot be opened as a bag ({type(err).__name__}: {err}); '
                       'is it truncated, corrupt or still being recorded?') from err
    try:
        yield reader
    finally:
        try:
            reader.close()
        except _read_errors() as err:  # pragma: no cover - closing a broken file
            log.warning('%s: error while closing: %s', path, err)


def list_topics(path: str | Path) -> dict[str, TopicSummary]:
    """Topics of a bag, by name."""
    with open_bag(path) as reader:
        return _summaries(reader)


def _summaries(reader: Any) -> dict[str, TopicSummary]:
    return {name: TopicSummary(name, info.msgtype or '?', int(info.msgcount))
            for name, info in sorted(reader.topics.items())}


def _describe_topics(topics: dict[str, TopicSummary]) -> str:
    return '; '.join(str(t) for t in topics.values()) or 'none'


def select_topic(path: str | Path, topics: dict[str, TopicSummary], topic: str | None,
                 msgtypes: Sequence[str], what: str) -> TopicSummary:
    """The topic to read: the one named (must exist and have one of ``msgtypes``), or the only
    topic of those types. ``BagError`` listing the bag's topics otherwise."""
    if topic is not None:
        if topic not in topics:
            candidates = [t for t in topics.values() if t.msgtype in msgtypes]
            hint = f'; {what} topics: {", ".join(t.name for t in candidates)}' if candidates else ''
            raise BagError(f'{path}: no topic {topic!r}{hint}. The bag has: {_describe_topics(topics)}')
        found = topics[topic]
        if found.msgtype not in msgtypes:
            raise BagError(f'{path}: topic {topic} has type {found.msgtype}, expected {what} '
                           f'({", ".join(msgtypes)})')
        return found
    candidates = [t for t in topics.values() if t.msgtype in msgtypes]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise BagError(f'{path}: no {what} topic ({", ".join(msgtypes)}). The bag has: {_describe_topics(topics)}')
    raise BagError(f'{path}: several {what} topics, choose one: {", ".join(t.name for t in candidates)}')


def image_from_message(msg: Any, msgtype: str, what: str = 'image') -> np.ndarray:
    """A deserialized Image or CompressedImage message -> RGB uint8 (``ImageError`` if unusable)."""
    if msgtype == RAW_IMAGE:
        return raw_to_rgb8(msg.data, int(msg.height), int(msg.width), str(msg.encoding), int(msg.step),
                           bool(msg.is_bigendian))
    if msgtype == COMPRESSED_IMAGE:
        fmt = str(msg.format).lower()
        if 'compresseddepth' in fmt:
            raise ImageError(f'{what}: compressedDepth images are not supported (format {msg.format!r})')
        return decode_to_rgb8(msg.data, what=what)
    raise ImageError(f'{what}: {msgtype} is not an image message type ({", ".join(IMAGE_TYPES)})')


def iter_images(path: str | Path, topic: str | None = None, *, stamp: str = 'header', decode: bool = True,
                report: ReadReport | None = None, max_frames: int | None = None,
                every: int = 1) -> Iterator[BagImage]:
    """Image messages of ``topic`` (the only image topic when None) in bag order.

    ``stamp``: 'header' (the message's header stamp; bag time where it is zero) or 'bag' (receive
    time). Frames that cannot be converted are skipped with a warning; ``report`` collects counts,
    skipped frames and stamps that go backwards or repeat (the caller decides how to order them).
    ``every``: keep one message in ``every``; ``max_frames``: stop after that many frames.
    """
    if stamp not in STAMP_SOURCES:
        raise ValueError(f'stamp must be one of {", ".join(STAMP_SOURCES)}, got {stamp!r}')
    if every < 1:
        raise ValueError(f'every must be >= 1, got {every}')
    path = Path(path)
    report = report if report is not None else ReadReport()
    with open_bag(path) as reader:
        chosen = select_topic(path, _summaries(reader), topic, IMAGE_TYPES, 'image')
        report.bag, report.topic, report.msgtype = str(path), chosen.name, chosen.msgtype
        connections = [c for c in reader.connections if c.topic == chosen.name]
        last_stamp: int | None = None
        index = -1
        messages = reader.messages(connections=connections)
        while True:
            try:
                item = next(messages)
            except StopIteration:
                break
            except _read_errors() as err:
                raise BagError(f'{path}: cannot read message {report.messages} of {chosen.name} '
                               f'({type(err).__name__}: {err}); the bag is truncated or corrupt') from err
            conn, bag_ns, raw = item
            report.messages += 1
            index += 1
            if index % every:
                continue
            what = f'{path}:{chosen.name} message {index}'
            try:
                msg = reader.deserialize(raw, conn.msgtype)
            except _read_errors() as err:
                log.warning('%s: cannot be deserialized (%s), skipped', what, err)
                report.skipped.append({'index': index, 'reason': f'deserialize: {err}'})
                continue
            header_ns = stamp_to_ns(msg.header.stamp)
            if stamp == 'bag':
                stamp_ns = int(bag_ns)
            elif header_ns == 0:
                report.zero_stamps += 1
                stamp_ns = int(bag_ns)
            else:
                stamp_ns = header_ns
            rgb = None
            if decode:
                try:
                    rgb = image_from_message(msg, conn.msgtype, what)
                    if not rgb.flags.writeable:  # a view of the message buffer
                        rgb = rgb.copy()
                except ImageError as err:
                    log.warning('%s skipped: %s', what, err)
                    report.skipped.append({'index': index, 'reason': str(err)})
                    continue
            if last_stamp is not None:
                if stamp_ns < last_stamp:
                    report.out_of_order += 1
                elif stamp_ns == last_stamp:
                    report.duplicate_stamps += 1
            last_stamp = stamp_ns if last_stamp is None else max(last_stamp, stamp_ns)
            report.yielded += 1
            yield BagImage(index, stamp_ns, int(bag_ns), rgb, str(msg.header.frame_id))
            if max_frames is not None and report.yielded >= max_frames:
                break
    if report.zero_stamps:
        log.warning('%s:%s: %d messages have a zero header stamp; their bag receive time is used',
                    path, report.topic, report.zero_stamps)
    if report.out_of_order:
        log.warning('%s:%s: %d image stamps go backwards in bag order', path, report.topic, report.out_of_order)


def pose_from_message(msg: Any, msgtype: str) -> PoseSample:
    """A deserialized Odometry / PoseStamped / PoseWithCovarianceStamped -> ``PoseSample``."""
    if msgtype == ODOMETRY or msgtype == POSE_COV_STAMPED:
        pose = msg.pose.pose
    elif msgtype == POSE_STAMPED:
        pose = msg.pose
    else:
        raise BagError(f'{msgtype} is not a pose message type ({", ".join(POSE_TYPES)})')
    p, q = pose.position, pose.orientation
    return PoseSample(stamp_to_ns(msg.header.stamp), (float(p.x), float(p.y), float(p.z)),
                      (float(q.x), float(q.y), float(q.z), float(q.w)), str(msg.header.frame_id))


def iter_poses(path: str | Path, topic: str | None = None) -> Iterator[PoseSample]:
    """Pose messages of ``topic`` (the only pose topic when None) in bag order; a zero header
    stamp is replaced by the bag receive time."""
    path = Path(path)
    with open_bag(path) as reader:
        chosen = select_topic(path, _summaries(reader), topic, POSE_TYPES, 'pose')
        connections = [c for c in reader.connections if c.topic == chosen.name]
        n = 0
        messages = reader.messages(connections=connections)
        while True:
            try:
                conn, bag_ns, raw = next(messages)
                msg = reader.deserialize(raw, conn.msgtype)
            except StopIteration:
                break
            except _read_errors() as err:
                raise BagError(f'{path}: cannot read message {n} of {chosen.name} '
                               f'({type(err).__name__}: {err}); the bag is truncated or corrupt') from err
            n += 1
            sample = pose_from_message(msg, conn.msgtype)
            if sample.stamp_ns == 0:
                sample.stamp_ns = int(bag_ns)
            yield sample


def read_poses(path: str | Path, topic: str | None = None) -> list[PoseSample]:
    """All poses of a topic, sorted by stamp."""
    return sorted(iter_poses(path, topic), key=lambda s: s.stamp_ns)


def _iter_bag(path: Path, topics: Sequence[str] | None, decode: Callable[[Any, Any, bytes], Any]
              ) -> Iterator[tuple[str, str, int, Any]]:
    """(topic, msgtype, bag_ns, decode(reader, connection, raw)) for the named topics (all when
    None), in bag order. A missing topic is a ``BagError`` listing the bag's topics; an unreadable
    message is a ``BagError`` naming the bag and the message number."""
    with open_bag(path) as reader:
        summaries = _summaries(reader)
        if topics:
            missing = [t for t in topics if t not in summaries]
            if missing:
                raise BagError(f'{path}: no topic {", ".join(missing)}. The bag has: {_describe_topics(summaries)}')
        connections = [c for c in reader.connections if not topics or c.topic in topics]
        messages = reader.messages(connections=connections)
        n = 0
        while True:
            try:
                conn, bag_ns, raw = next(messages)
                value = decode(reader, conn, raw)
            except StopIteration:
                break
            except _read_errors() as err:
                raise BagError(f'{path}: cannot read message {n} ({type(err).__name__}: {err}); '
                               'the bag is truncated or corrupt') from err
            n += 1
            yield conn.topic, conn.msgtype, int(bag_ns), value


def iter_messages(path: str | Path, topics: Sequence[str] | None = None) -> Iterator[tuple[str, str, int, Any]]:
    """(topic, msgtype, bag_ns, deserialized message) for the named topics (all when None), in
    bag order; a missing topic is a ``BagError`` listing the bag's topics."""
    return _iter_bag(Path(path), topics, lambda reader, conn, raw: reader.deserialize(raw, conn.msgtype))


def iter_raw_messages(path: str | Path, topics: Sequence[str] | None = None) -> Iterator[tuple[str, str, int, bytes]]:
    """(topic, msgtype, bag_ns, serialized bytes) in bag order, for republishing. ROS 1 bags are
    converted to CDR so that the bytes are what a ROS 2 subscriber expects."""
    path = Path(path)
    if not _is_ros1(path):
        return _iter_bag(path, topics, lambda reader, conn, raw: bytes(raw))
    store2 = _typestore(False)
    cache: dict[str, object] = {}
    return _iter_bag(path, topics, lambda reader, conn, raw: _ros1_to_cdr(reader.typestore, store2, conn.msgtype,
                                                                          raw, cache))


def _ros1_to_cdr(store1: Any, store2: Any, msgtype: str, raw: bytes, cache: dict) -> bytes:
    """A ROS 1 message -> CDR bytes of the ROS 2 type of the same name (fields that ROS 2 lacks,
    such as ``Header.seq``, are dropped), with the migration of ``rosbags.convert``."""
    from rosbags.convert.converter import migrate_bytes
    if msgtype not in store2.types:
        raise BagError(f'{msgtype} of a ROS 1 bag has no ROS 2 counterpart to publish')
    return bytes(migrate_bytes(store1, store2, msgtype, msgtype, cache, raw, src_is2=False, dst_is2=True))


class BagWriter:
    """Writes a new bag: rosbag2 (``sqlite3`` or ``mcap``) or ROS 1 (``ros1``, a ``.bag`` file).

    Use as a context manager; on an exception the partial bag is closed as far as it got. The
    message log time is the stamp given (so replay follows the recorded timing).
    """

    def __init__(self, path: str | Path, storage: str = 'sqlite3', version: int = 8) -> None:
        if storage not in STORAGES:
            raise ValueError(f'storage must be one of {", ".join(STORAGES)}, got {storage!r}')
        self.path = Path(path)
        self.storage = storage
        if self.path.exists():
            raise BagError(f'{self.path} exists already; choose a new output path (bags are never overwritten)')
        if storage == 'ros1' and self.path.suffix != '.bag':
            raise BagError(f'{self.path}: a ROS 1 bag must end in .bag')
        self._ros1 = storage == 'ros1'
        self.typestore = _typestore(self._ros1)
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
        """A message object of ``msgtype`` (e.g. 'std_msgs/msg/Header') from keyword fields."""
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
        key = (topic, msgtype)
        conn = self._connections.get(key)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
            self._connections[key] = conn
        data = (self.typestore.serialize_ros1(message, msgtype) if self._ros1
                else self.typestore.serialize_cdr(message, msgtype))
        self._writer.write(conn, int(stamp_ns), data)
        self.counts[topic] = self.counts.get(topic, 0) + 1

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
        """(msgtype, message) of an RGB uint8 image: raw ``rgb8`` Image, or CompressedImage in
        JPEG/PNG with the image_transport format string."""
        if fmt not in IMAGE_FORMATS:
            raise ValueError(f'image format must be one of {", ".join(IMAGE_FORMATS)}, got {fmt!r}')
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
        """A PoseStamped, PoseWithCovarianceStamped or Odometry message."""
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
        raise ValueError(f'pose message type must be one of {", ".join(POSE_TYPES)}, got {msgtype!r}')

    def add_pose(self, topic: str, stamp_ns: int, position: Sequence[float],
                 orientation: Sequence[float] | None = None, frame_id: str = 'map',
                 msgtype: str = POSE_STAMPED, child_frame_id: str = '') -> None:
        """Write a pose (PoseStamped by default; Odometry or PoseWithCovarianceStamped on request)."""
        self.write(topic, msgtype, stamp_ns,
                   self.pose_message(msgtype, stamp_ns, position, orientation, frame_id, child_frame_id))
