"""The node's frame hand-over.

The image callback keeps the newest frame, one worker thread takes it. No ROS imports.
"""
from __future__ import annotations

import threading
from typing import Any, Callable


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
        """Take the newest frame, or None after ``timeout`` seconds or once closed."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Worker:
    """One thread calling ``handle(item)`` for every frame taken from a ``FrameSlot``.

    ``on_error(err)`` for an exception (the thread goes on). ``stop`` drops a frame not taken yet.
    """

    def __init__(self, handle: Callable[[Any], None], on_error: Callable[[Exception], None]) -> None:
        self.slot = FrameSlot()
        self._handle = handle
        self._on_error = on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name='vpr_worker', daemon=True)
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            item = self.slot.take(timeout=0.2)
            if item is None:
                continue
            try:
                self._handle(item)
            except Exception as err:  # never let one frame end the worker
                self._on_error(err)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.slot.close()
        self._thread.join(timeout)
