"""What this machine offers the backends: physical cores, CPU bf16 support, optional runtimes."""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

PRECISIONS = ('auto', 'fp32', 'fp16', 'bf16', 'int8')


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in cpus:
        topo = Path(f'/sys/devices/system/cpu/cpu{cpu}/topology')
        try:
            cores.add(((topo / 'physical_package_id').read_text().strip(), (topo / 'core_id').read_text().strip()))
        except OSError:
            cores.add(('?', str(cpu)))
    return max(1, len(cores))


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from /proc/cpuinfo (empty where unavailable)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith(('flags', 'Features')):
                    return frozenset(line.split(':', 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=None)
def cpu_supports_bf16() -> bool:
    """Tell whether the CPU computes bf16 natively (x86 AVX512_BF16 or AMX-BF16, Arm BF16).

    oneDNN also runs bf16 on plain AVX-512 by emulation, which is slower than FP32: the CPU flags
    decide, and oneDNN's own check is the fallback where no flags can be read.
    """
    flags = cpu_flags()
    if flags:
        return bool(flags & {'avx512_bf16', 'amx_bf16', 'bf16'})
    try:
        import torch
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def has_module(name: str) -> bool:
    """Tell whether a Python package is importable (without importing it).

    A folder without code does not count: a namespace package, such as the ``tensorrt/`` of .pyi
    files that ``tensorrt-stubs`` puts into site-packages, imports but holds nothing to run.
    """
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin not in (None, 'namespace')


def check_precision(precision: str, backend: str, valid: tuple[str, ...]) -> None:
    from ..errors import BackendError
    if precision not in valid:
        raise BackendError(f'{backend} backend: precision {precision!r} not supported here; valid: {", ".join(valid)}')
