"""Units and value parsing shared by every module (defined once here)."""
from __future__ import annotations

import numbers
from typing import Any

NS_PER_S = 1_000_000_000

_BOOL_WORDS = {'true': True, 'false': False, '1': True, '0': False, 'yes': True, 'no': False}


def ns_to_sec(stamp_ns: int) -> float:
    """A stamp in integer nanoseconds as float seconds (the unit of ``~/loop_closure``)."""
    return stamp_ns / NS_PER_S


def parse_bool(name: str, value: Any) -> bool:
    """``value`` as a bool: a bool, 0/1, or one of true/false/yes/no/1/0 (any case). ValueError naming
    ``name`` otherwise."""
    if isinstance(value, bool) or type(value).__name__ in ('bool_', 'bool'):   # numpy's bool too
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.strip().lower()]
    raise ValueError(f'{name} must be true or false, got {value!r}')
