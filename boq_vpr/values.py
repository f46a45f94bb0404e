"""Units, value parsing, latency summaries and file digests shared by every module (defined once here)."""
from __future__ import annotations

import hashlib
import numbers
from pathlib import Path
from typing import Any, Sequence

import numpy as np

NS_PER_S = 1_000_000_000

_BOOL_WORDS = {'true': True, 'false': False, '1': True, '0': False, 'yes': True, 'no': False}


def ns_to_sec(stamp_ns: int) -> float:
    """Convert a stamp in integer nanoseconds to float seconds (the unit of ``~/loop_closure``)."""
    return stamp_ns / NS_PER_S


def stamp_to_ns(stamp: Any) -> int:
    """Convert a ROS time (``builtin_interfaces/Time``: ``sec``, ``nanosec``) to integer nanoseconds.

    ValueError when ``nanosec`` is outside [0, 1e9), as a malformed message can have it.
    """
    sec, nsec = int(stamp.sec), int(stamp.nanosec)
    if nsec < 0 or nsec >= NS_PER_S:
        raise ValueError(f'stamp nanosec {nsec} outside [0, 1e9)')
    return sec * NS_PER_S + nsec


def ns_to_stamp(ns: int) -> tuple[int, int]:
    """Integer nanoseconds as ``(sec, nanosec)``."""
    return int(ns) // NS_PER_S, int(ns) % NS_PER_S


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (weights, ONNX files, map files)."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def parse_bool(name: str, value: Any) -> bool:
    """``value`` as a bool: a bool, 0/1, or one of true/false/yes/no/1/0 (any case).

    ValueError naming ``name`` otherwise.
    """
    if isinstance(value, bool) or type(value).__name__ in ('bool_', 'bool'):   # numpy's bool too
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.strip().lower()]
    raise ValueError(f'{name} must be true or false, got {value!r}')


def latency_summary(ms: Sequence[float] | np.ndarray, suffix: str = '') -> dict:
    """Summarize durations in milliseconds: count, mean, p50, p90, p95, p99 and maximum.

    ``{'n': 0}`` when there are none. ``suffix`` is appended to every key but ``n`` (``'_ms'``:
    ``p50_ms``, ...). The node's diagnostics, the evaluator and the benchmarks all summarize with it.
    """
    a = np.asarray(ms, np.float64).reshape(-1)
    if a.size == 0:
        return {'n': 0}
    p50, p90, p95, p99 = (float(v) for v in np.percentile(a, (50, 90, 95, 99)))
    values = {'mean': float(a.mean()), 'p50': p50, 'p90': p90, 'p95': p95, 'p99': p99, 'max': float(a.max())}
    return {'n': int(a.size), **{f'{k}{suffix}': v for k, v in values.items()}}
