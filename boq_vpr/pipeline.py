"""The frame pipeline without ROS: image -> encoder -> loop-closure detector -> what to publish.

One implementation used by the node (per camera frame), the offline evaluator (per bag frame, from
saved descriptors: ``detect``) and the benchmarks. What a frame's outputs *mean* is decided here:

- ``loop``: the best accepted candidate whose match is a keyframe of the running slam session
  (both ends in one odometry frame and pose graph: the ``~/loop_closure`` message);
- ``relocalization``: the best accepted candidate whose match is a keyframe of an earlier session or
  of a prebuilt map (its stored pose is in that map's frame: the ``~/relocalization`` message);
- ``rows``: every accepted candidate as a row of ``CANDIDATE_COLUMNS`` (``~/candidates``).
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .detection import FrameResult, LoopCandidate, LoopClosureDetector
from .map import Keyframe, MapDatabase

# Variance (rad^2) that says "orientation unknown" (a standard deviation of 1000 rad) to a consumer
# that weighs a pose by its covariance, as robot_localization's filters do.
UNKNOWN_ORIENTATION_VARIANCE = 1e6
# Floor of the automatic position variance (m^2): keyframes closer than 0.1 m still do not locate a
# camera better than that.
MIN_POSITION_VARIANCE = 0.01


@dataclass
class FrameOutputs:
    """What one frame gives a back end (see the module docstring)."""

    result: FrameResult
    loop: LoopCandidate | None = None
    relocalization: LoopCandidate | None = None
    attention: np.ndarray | None = None         # [Q, h*w] of the chosen block, when asked for
    attention_grid: tuple[int, int] | None = None
    attention_error: Exception | None = None    # attention was asked for and failed (the frame went on)
    image: np.ndarray | None = None             # the converted RGB frame
    position: tuple | None = None               # the camera position used (odometry), if any
    frame_id: str = ''                          # its frame
    seconds: dict[str, float] = field(default_factory=dict)   # convert, encode, detect

    @property
    def rows(self) -> list[tuple[float, ...]]:
        return [c.row() for c in self.result.candidates]


def split_candidates(result: FrameResult) -> tuple[LoopCandidate | None, LoopCandidate | None]:
    """(best loop, best relocalization) among the accepted candidates (best first)."""
    loop = next((c for c in result.candidates if c.kind == 'loop'), None)
    reloc = next((c for c in result.candidates if c.kind == 'relocalization'), None)
    return loop, reloc


def keyframe_spacing(keyframes: list[Keyframe]) -> float | None:
    """Median distance (m) between consecutive keyframes (by id) of one session label and frame.

    Only pairs that both have a position count; None when no such pair exists.
    """
    steps = []
    prev = None
    for kf in sorted(keyframes, key=lambda k: k.id):
        if kf.position is None:
            prev = None
            continue
        if prev is not None and prev.session == kf.session and prev.frame_id == kf.frame_id:
            steps.append(math.dist(prev.position, kf.position))
        prev = kf
    return float(np.median(steps)) if steps else None


def auto_position_variance(db: MapDatabase) -> float | None:
    """Return the position variance (m^2) of a relocalization into ``db`` when no fixed one is set.

    One keyframe step (median spacing) as the standard deviation, at least ``MIN_POSITION_VARIANCE``.
    A match tells which keyframe the camera is near, not where between it and its neighbours.
    """
    spacing = keyframe_spacing(db.keyframes())
    if spacing is None:
        return None
    return max(spacing * spacing, MIN_POSITION_VARIANCE)


def pose_covariance(has_orientation: bool, position_variance: float, orientation_variance: float) -> list[float]:
    """Row-major 6x6 covariance (x, y, z, roll, pitch, yaw) of a relocalization pose.

    An unknown orientation gets ``UNKNOWN_ORIENTATION_VARIANCE``.
    """
    cov = np.zeros((6, 6))
    cov[0, 0] = cov[1, 1] = cov[2, 2] = position_variance
    ov = orientation_variance if has_orientation else UNKNOWN_ORIENTATION_VARIANCE
    cov[3, 3] = cov[4, 4] = cov[5, 5] = ov
    return [float(x) for x in cov.ravel()]


class FramePipeline:
    """convert -> encode -> detect -> outputs for one frame at a time.

    Thread-safe: ``lock`` guards the detector and the map (the node's services take it too).
    """

    def __init__(self, encoder: Any, detector: LoopClosureDetector, lock: threading.RLock | None = None) -> None:
        self.encoder = encoder
        self.detector = detector
        self.lock = lock if lock is not None else threading.RLock()
        self._attention_backend = None

    @property
    def db(self) -> MapDatabase:
        return self.detector.db

    # ------------------------------------------------------------------ encode
    def encode(self, rgb: np.ndarray) -> np.ndarray:
        """Return the descriptor ``[D]`` of one RGB uint8 image."""
        return self.encoder.encode(rgb)[0]

    def encode_with_attention(self, rgb: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """Descriptor ``[D]``, the cross-attention ``[Q, h*w]`` of BoQ block ``block`` and the grid (h, w)."""
        if getattr(self.encoder, 'supports_attention', False):   # the same graph and precision as encode
            desc, attns, grid = self.encoder.encode_with_attention(rgb)
            return desc, attns[block], grid
        return self._eager_attention(rgb, block)

    def _eager_attention(self, rgb: np.ndarray, block: int):
        """Attention from the PyTorch model next to a backend that cannot give it (see the README)."""
        from .encoder import l2_normalize
        backend = self.encoder.backend
        if getattr(backend, 'name', '') == 'torch' and hasattr(backend, 'attention'):
            attn_backend, desc = backend, None
        else:
            if self._attention_backend is None:
                from .backends import make_backend
                self._attention_backend = make_backend('torch', self.encoder.config, self.encoder.weights,
                                                       device='cpu')
            attn_backend, desc = self._attention_backend, self.encode(rgb)
        batch = self.encoder.preprocessor.batch([rgb])
        d, attns = attn_backend.attention(batch)
        if desc is None:
            desc = l2_normalize(d)[0]
        grid = attn_backend.model.feature_shape(int(batch.shape[-2]), int(batch.shape[-1]))
        return desc, attns[block][0], grid

    # ------------------------------------------------------------------ detect
    def detect(self, descriptor: np.ndarray, stamp_ns: int, position=None, orientation=None, frame_id: str = '',
               image: np.ndarray | None = None, source: str = '') -> FrameOutputs:
        """Return the detector's decision on one descriptor, split into what a back end receives."""
        with self.lock:
            result = self.detector.process(descriptor, stamp_ns, position=position, orientation=orientation,
                                           frame_id=frame_id, image=image, source=source)
        loop, reloc = split_candidates(result)
        return FrameOutputs(result, loop, reloc)

    # ------------------------------------------------------------------ the whole frame
    def process(self, convert: Callable[[], np.ndarray], stamp_ns: int,
                pose: Callable[[int], tuple[tuple | None, tuple | None, str]] | None = None,
                source: str = '', attention_block: int | None = None) -> FrameOutputs:
        """Run one frame through convert, encode and detect, and return its outputs.

        ``convert()`` gives the RGB image (it may raise for a bad message); ``pose(stamp_ns)`` the
        camera pose at the stamp, or (None, None, ''). ``attention_block``: also compute that block's
        attention.
        """
        t0 = time.perf_counter()
        rgb = convert()
        t1 = time.perf_counter()
        attention = grid = error = None
        if attention_block is not None:
            try:
                desc, attention, grid = self.encode_with_attention(rgb, attention_block)
            except Exception as err:   # the overlay is optional: loop closure goes on without it
                attention, error = None, err
        if attention is None:
            desc = self.encode(rgb)
        t2 = time.perf_counter()
        position, orientation, frame = pose(stamp_ns) if pose is not None else (None, None, '')
        out = self.detect(desc, stamp_ns, position=position, orientation=orientation,
                          frame_id=frame, image=rgb, source=source)
        t3 = time.perf_counter()
        out.attention, out.attention_grid, out.attention_error, out.image = attention, grid, error, rgb
        out.position, out.frame_id = position, frame
        out.seconds = {'convert': t1 - t0, 'encode': t2 - t1, 'detect': t3 - t2}
        return out
