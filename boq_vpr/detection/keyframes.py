"""Keyframe selection: which frames join the map (minimum time, travelled distance, descriptor novelty)."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class KeyframeDecision:
    """Whether a frame becomes a keyframe, and why not when it does not."""

    accept: bool
    reason: str = ''


class KeyframeSelector:
    """A frame becomes a keyframe when every enabled condition holds against the last keyframe.

    - ``min_time_s``: at least this much time has passed (0 = off);
    - ``min_distance_m``: the position moved at least this far (0 = off; frames without a
      position, or when the last keyframe had none, pass this test);
    - ``max_similarity``: the descriptor's cosine similarity to the last keyframe's is at most
      this (novelty; 1 = off).
    The first frame is always a keyframe.
    """

    def __init__(self, min_time_s: float = 0.0, min_distance_m: float = 0.0, max_similarity: float = 1.0) -> None:
        self.min_time_s = float(min_time_s)
        self.min_distance_m = float(min_distance_m)
        self.max_similarity = float(max_similarity)
        self.reset()

    def reset(self) -> None:
        """Forget the last keyframe: the next frame is accepted."""
        self._stamp_ns: int | None = None
        self._position: np.ndarray | None = None
        self._descriptor: np.ndarray | None = None

    def check(self, descriptor: np.ndarray, stamp_ns: int, position=None) -> KeyframeDecision:
        """Decide for one frame without remembering it (call ``accept`` when it joins the map)."""
        if self._stamp_ns is None:
            return KeyframeDecision(True)
        dt = (int(stamp_ns) - self._stamp_ns) * 1e-9
        if self.min_time_s > 0 and dt < self.min_time_s:
            return KeyframeDecision(False, f'not a keyframe: {dt:.3f} s since the last one '
                                           f'(min_time_s {self.min_time_s})')
        if self.min_distance_m > 0 and position is not None and self._position is not None:
            dist = float(np.linalg.norm(np.asarray(position, np.float64) - self._position))
            if dist < self.min_distance_m:
                return KeyframeDecision(False, f'not a keyframe: moved {dist:.3f} m '
                                               f'(min_distance_m {self.min_distance_m})')
        if self.max_similarity < 1.0 and self._descriptor is not None:
            sim = float(np.dot(descriptor.ravel(), self._descriptor))
            if sim > self.max_similarity:
                return KeyframeDecision(False, f'not a keyframe: similarity {sim:.3f} to the last one '
                                               f'(max_similarity {self.max_similarity})')
        return KeyframeDecision(True)

    def accept(self, descriptor: np.ndarray, stamp_ns: int, position=None) -> None:
        """Remember this frame as the last keyframe."""
        self._stamp_ns = int(stamp_ns)
        if position is not None:
            p = np.asarray(position, np.float64).ravel()
            self._position = p if p.size and all(math.isfinite(v) for v in p) else self._position
        self._descriptor = np.asarray(descriptor, np.float32).ravel().copy()
