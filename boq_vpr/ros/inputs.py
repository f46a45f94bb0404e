"""The node's input callbacks.

They check a message, count it and hand the newest frame to the worker. They never block (the
odometry buffer has its own lock; the frame slot only swaps a reference).
"""
from __future__ import annotations

import time
from typing import Any, Callable

from ..inputs.images import FrameRejected, check_raw_message
from ..values import ns_to_sec
from .convert import stamp_to_ns
from .odometry import OdometryInput
from .stats import PipelineStats
from .worker import Worker


class Inputs:
    """The node's subscription callbacks: ``on_image``, ``on_compressed``, ``on_odom``.

    ``worker`` receives ``(msg, compressed, t_received, stamp_ns)``. ``warn(key, message)`` logs, throttled per key.
    """

    def __init__(self, stats: PipelineStats, odometry: OdometryInput, warn: Callable[[str, str], None]) -> None:
        self.stats = stats
        self.odometry = odometry
        self._warn = warn
        self.worker: Worker | None = None
        self.last_stamp_ns: int | None = None   # of the running session: a frame must come after it

    def reject(self, reason: str, message: str) -> None:
        """Count a frame rejected for ``reason`` and warn (throttled)."""
        self.stats.reject(reason)
        self._warn('image:' + reason, f'rejected frame [{reason}]: {message}')

    def _accept_header(self, msg: Any, kind: str) -> int | None:
        self.stats.count('frames_received')
        self.stats.input_rate.tick()
        try:
            stamp_ns = stamp_to_ns(msg.header.stamp)
        except FrameRejected as err:
            self.reject(err.reason, str(err))
            return None
        last = self.last_stamp_ns
        if last is not None and stamp_ns <= last:
            self.reject('stamp_out_of_order', f'{kind} stamp {ns_to_sec(stamp_ns):.9f} is not after the previous '
                        f'frame\'s {ns_to_sec(last):.9f}; frame ignored (a time jump within a session: restart the '
                        'node, or ~/clear_map)')
            return None
        return stamp_ns

    def on_image(self, msg: Any) -> None:
        t = time.perf_counter()
        try:
            stamp_ns = self._accept_header(msg, 'image')
            if stamp_ns is None:
                return
            check_raw_message(msg)
        except FrameRejected as err:
            self.reject(err.reason, str(err))
            return
        except Exception as err:  # a message this node does not understand at all
            self.reject('malformed', f'{type(err).__name__}: {err}')
            return
        self._enqueue(msg, False, t, stamp_ns)

    def on_compressed(self, msg: Any) -> None:
        t = time.perf_counter()
        try:
            stamp_ns = self._accept_header(msg, 'compressed image')
        except Exception as err:
            self.reject('malformed', f'{type(err).__name__}: {err}')
            return
        if stamp_ns is None:
            return
        if len(msg.data) == 0:
            self.reject('empty_image', f'compressed image ({msg.format!r}) has no data')
            return
        self._enqueue(msg, True, t, stamp_ns)

    def _enqueue(self, msg: Any, compressed: bool, t_recv: float, stamp_ns: int) -> None:
        self.last_stamp_ns = stamp_ns
        worker = self.worker
        if worker is not None and worker.slot.put((msg, compressed, t_recv, stamp_ns)):
            self.stats.count('frames_dropped')

    def on_odom(self, msg: Any) -> None:
        self.stats.count('odom_received')
        try:
            self.odometry.add(msg)
        except FrameRejected as err:
            self._odom_rejected(err.reason, str(err))
        except Exception as err:
            self._odom_rejected('malformed', f'{type(err).__name__}: {err}')

    def _odom_rejected(self, reason: str, message: str) -> None:
        self.stats.count('odom_rejected')
        self.stats.count('odom_rejected.' + reason)
        self._warn('odom:' + reason, f'rejected odometry [{reason}]: {message}')
