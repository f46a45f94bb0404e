"""Timing helpers for benchmark commands (never used as test thresholds)."""
from __future__ import annotations

import os
import platform
import resource
import time
from typing import Callable



def time_calls(fn: Callable[[], object], iterations: int, warmup: int = 2) -> list[float]:
    """Wall time (s) of ``iterations`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def current_rss_mib() -> float:
    """Resident memory of this process now (VmRSS, MiB); NaN where /proc is absent."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float('nan')


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine_info() -> dict:
    """Describe the machine the figures were measured on."""
    import torch
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    info = {'cpu': cpu, 'cores': os.cpu_count(), 'torch': torch.__version__, 'torch_threads': torch.get_num_threads(),
            'python': platform.python_version()}
    if torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name(0)
    return info
