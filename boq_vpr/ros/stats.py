"""Counters, rates, latency windows and log throttling for the node's diagnostics (no ROS imports)."""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Callable

from ..values import latency_summary


class RateMeter:
    """Events per second over a sliding time window."""

    def __init__(self, window_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            now = self._clock()
            self._times.append(now)
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()

    def rate(self) -> float:
        with self._lock:
            now = self._clock()
            self._trim(now)
            if len(self._times) < 2:
                return 0.0
            return (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-9)


class LatencyWindow:
    """The last ``size`` durations of each stage (seconds); percentiles in milliseconds."""

    def __init__(self, size: int = 300) -> None:
        self.size = size
        self._samples: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._samples.setdefault(stage, deque(maxlen=self.size)).append(seconds)

    def add_all(self, stages: dict[str, float]) -> None:
        for stage, seconds in stages.items():
            self.add(stage, seconds)

    def summary_ms(self) -> dict[str, dict[str, float]]:
        """Map each stage to its ``latency_summary`` over the window, in milliseconds.

        Keys: n, mean, p50, p90, p95, p99, max.
        """
        with self._lock:
            snap = {k: [s * 1e3 for s in v] for k, v in self._samples.items() if v}
        return {stage: latency_summary(ms) for stage, ms in snap.items()}


class Throttle:
    """Per-key log throttling: the first event of a key passes, then at most one per ``period_s``.

    ``check(key)`` returns ``None`` when the event is to be suppressed, else the number of events of
    that key suppressed since the last one that passed.
    """

    def __init__(self, period_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.period_s = period_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()
        self._lock = threading.Lock()

    def check(self, key: str) -> int | None:
        with self._lock:
            now = self._clock()
            last = self._last.get(key)
            if last is not None and now - last < self.period_s:
                self._suppressed[key] += 1
                return None
            self._last[key] = now
            return self._suppressed.pop(key, 0)


class PipelineStats:
    """What the node counts: frames received, processed, dropped, rejected per reason, outputs."""

    def __init__(self, latency_window: int = 300, rate_window_s: float = 5.0) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.latency = LatencyWindow(latency_window)
        self.input_rate = RateMeter(rate_window_s)
        self.processed_rate = RateMeter(rate_window_s)
        self.started = time.monotonic()

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] += 1
            self.counts['rejected'] += 1

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        with self._lock:
            return dict(self.counts), dict(self.rejected)
