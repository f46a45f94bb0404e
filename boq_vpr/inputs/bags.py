"""Bag input with ``rosbags`` (no ROS install needed).

Reads rosbag2 (sqlite3 and mcap, a bag directory or a single ``.db3``/``.mcap`` file) and ROS 1
``.bag`` files: topic listing, image messages (``sensor_msgs/Image`` and ``CompressedImage``)
as ``(stamp_ns, RGB uint8)`` through ``boq_vpr.inputs.images``, and poses (``nav_msgs/Odometry``,
``geometry_msgs/PoseStamped``, ``PoseWithCovarianceStamped``). Bags are written by
``boq_vpr.inputs.bag_writer.BagWriter`` (rosbag2 sqlite3 and mcap, ROS 1), also importable from
here. These are the one bag modules: the evaluator, the replay tool, ``make-bag`` and the training
data builders all go through them.
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

import numpy as np

from ..errors import BagError, ConfigError, ImageError
from ..values import stamp_to_ns
from .bag_writer import IMAGE_FORMATS, STORAGES, BagWriter
from .messages import (COMPRESSED_IMAGE, IMAGE_TYPES, ODOMETRY, POSE_COV_STAMPED, POSE_STAMPED, POSE_TYPES, RAW_IMAGE,
                       PoseSample, image_from_message, pose_from_message, typestore)

log = logging.getLogger(__name__)

__all__ = ['BagImage', 'BagWriter', 'COMPRESSED_IMAGE', 'GROUND_TRUTH_SIDECAR', 'IMAGE_FORMATS', 'IMAGE_TYPES',
           'ODOMETRY', 'POSE_COV_STAMPED', 'POSE_STAMPED', 'POSE_TYPES', 'PoseSample', 'RAW_IMAGE', 'ReadReport',
           'STAMP_SOURCES', 'STORAGES', 'TopicSummary', 'ground_truth_sidecar', 'image_from_message', 'is_bag',
           'iter_images', 'iter_messages', 'iter_poses', 'iter_raw_messages', 'list_topics', 'open_bag',
           'pose_from_message', 'read_poses', 'select_topic']

STAMP_SOURCES = ('header', 'bag')


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
    """One image message.

    Its index on the topic, stamps (header and bag receive time), RGB pixels (None when read with
    ``decode=False``) and the camera frame.
    """

    index: int
    stamp_ns: int
    bag_ns: int
    rgb: np.ndarray | None
    frame_id: str = ''


@dataclass
class ReadReport:
    """What reading a topic met.

    Counts of messages, frames skipped (with reasons), stamps that went backwards or repeated, and
    frames whose header stamp was zero (bag time used instead).
    """

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
    """Return where ``make-bag`` puts a bag's ground-truth CSV.

    Inside a rosbag2 directory, else next to the bag file (``NAME.ground_truth.csv``).
    """
    path = Path(path)
    if path.is_dir() or not path.suffix:
        return path / GROUND_TRUTH_SIDECAR
    return path.with_name(path.stem + '.' + GROUND_TRUTH_SIDECAR)


def is_bag(path: str | Path) -> bool:
    """Tell whether ``path`` looks like a bag.

    A rosbag2 directory (``metadata.yaml``), a ``.db3`` or ``.mcap`` file, or a ROS 1 ``.bag`` file.
    """
    path = Path(path)
    if path.is_dir():
        return (path / 'metadata.yaml').is_file()
    return path.suffix in ('.db3', '.mcap', '.bag')


def _is_ros1(path: Path) -> bool:
    return path.is_file() and path.suffix == '.bag'


@contextmanager
def open_bag(path: str | Path) -> Iterator[Any]:
    """Open a rosbag2 directory/file or a ROS 1 bag as a ``rosbags.highlevel.AnyReader``.

    Errors become ``BagError`` naming the bag.
    """
    from rosbags.highlevel import AnyReader
    path = Path(path)
    if not path.exists():
        raise BagError(f'{path}: no such bag (give a rosbag2 directory, a .db3/.mcap file or a ROS 1 .bag)')
    try:
        reader = AnyReader([path], default_typestore=typestore(_is_ros1(path)))
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
    """Choose the topic to read.

    The one named (must exist and have one of ``msgtypes``), or the only topic of those types.
    ``BagError`` listing the bag's topics otherwise.
    """
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
        raise ConfigError(f'stamp must be one of {", ".join(STAMP_SOURCES)}, got {stamp!r}')
    if every < 1:
        raise ConfigError(f'every must be >= 1, got {every}')
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
            if stamp == 'bag':
                stamp_ns = int(bag_ns)
            else:
                try:
                    stamp_ns = stamp_to_ns(msg.header.stamp)
                except ValueError as err:   # nanosec out of range: a malformed header
                    log.warning('%s skipped: %s', what, err)
                    report.skipped.append({'index': index, 'reason': str(err)})
                    continue
                if stamp_ns == 0:
                    report.zero_stamps += 1
                    stamp_ns = int(bag_ns)
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


def iter_poses(path: str | Path, topic: str | None = None) -> Iterator[PoseSample]:
    """Pose messages of ``topic`` (the only pose topic when None) in bag order.

    A zero header stamp is replaced by the bag receive time; a message whose header stamp is
    invalid (nanosec out of range) is skipped with a warning.
    """
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
            try:
                sample = pose_from_message(msg, conn.msgtype)
            except ConfigError:
                raise
            except ValueError as err:   # nanosec out of range: a malformed header
                log.warning('%s:%s message %d skipped: %s', path, chosen.name, n - 1, err)
                continue
            if sample.stamp_ns == 0:
                sample.stamp_ns = int(bag_ns)
            yield sample


def read_poses(path: str | Path, topic: str | None = None) -> list[PoseSample]:
    """All poses of a topic, sorted by stamp."""
    return sorted(iter_poses(path, topic), key=lambda s: s.stamp_ns)


def _iter_bag(path: Path, topics: Sequence[str] | None, decode: Callable[[Any, Any, bytes], Any]
              ) -> Iterator[tuple[str, str, int, Any]]:
    """Yield (topic, msgtype, bag_ns, decode(reader, connection, raw)) in bag order.

    For the named topics (all when None). A missing topic is a ``BagError`` listing the bag's topics; an unreadable
    message is a ``BagError`` naming the bag and the message number.
    """
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
    """Yield (topic, msgtype, bag_ns, deserialized message) in bag order.

    For the named topics (all when None); a missing topic is a ``BagError`` listing the bag's topics.
    """
    return _iter_bag(Path(path), topics, lambda reader, conn, raw: reader.deserialize(raw, conn.msgtype))


def iter_raw_messages(path: str | Path, topics: Sequence[str] | None = None) -> Iterator[tuple[str, str, int, bytes]]:
    """Yield (topic, msgtype, bag_ns, serialized bytes) in bag order, for republishing.

    ROS 1 bags are converted to CDR so that the bytes are what a ROS 2 subscriber expects.
    """
    path = Path(path)
    if not _is_ros1(path):
        return _iter_bag(path, topics, lambda reader, conn, raw: bytes(raw))
    store2 = typestore(False)
    cache: dict[str, object] = {}
    return _iter_bag(path, topics, lambda reader, conn, raw: _ros1_to_cdr(reader.typestore, store2, conn.msgtype,
                                                                          raw, cache))


def _ros1_to_cdr(store1: Any, store2: Any, msgtype: str, raw: bytes, cache: dict) -> bytes:
    """Convert a ROS 1 message to CDR bytes of the ROS 2 type of the same name.

    Fields that ROS 2 lacks, such as ``Header.seq``, are dropped (the migration of ``rosbags.convert``).
    """
    from rosbags.convert.converter import migrate_bytes
    if msgtype not in store2.types:
        raise BagError(f'{msgtype} of a ROS 1 bag has no ROS 2 counterpart to publish')
    return bytes(migrate_bytes(store1, store2, msgtype, msgtype, cache, raw, src_is2=False, dst_is2=True))
