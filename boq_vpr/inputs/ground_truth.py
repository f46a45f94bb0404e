"""Ground truth of image sequences.

Where each frame was taken (position) or which place it shows (frame index), and which map frames
count as true matches of a query. Sources: a pose topic (interpolated to the image stamps), a CSV
matched by time (read by ``boq_vpr.inputs.poses.read_pose_table``: ``stamp_ns`` or ``stamp`` in
seconds, ``x, y, z``, optional ``qx, qy, qz, qw``, optional ``frame``; a headerless TUM trajectory
``t x y z qx qy qz qw`` is read too), or the frame order itself (datasets aligned by frame). A
query's positives are the map frames within ``distance_m`` (positions) or within
``frame_tolerance`` frames (frame indices).
"""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import BagError, ConfigError
from .poses import lookup_poses, read_pose_table
from ..values import NS_PER_S

log = logging.getLogger(__name__)

CRITERIA = ('auto', 'position', 'frame')


@dataclass
class GroundTruth:
    """Per-frame ground truth of a sequence of ``N`` frames.

    ``positions`` ``[N, 3]`` (NaN rows: unknown) and/or ``frames`` ``[N]`` int64 place indices (-1:
    unknown).
    """

    positions: np.ndarray | None = None
    frames: np.ndarray | None = None
    source: str = ''

    def __post_init__(self) -> None:
        if self.positions is not None:
            self.positions = np.asarray(self.positions, np.float64).reshape(-1, 3)
        if self.frames is not None:
            self.frames = np.asarray(self.frames, np.int64).reshape(-1)
        if self.positions is not None and self.frames is not None:
            assert len(self.positions) == len(self.frames), 'positions and frames differ in length'

    def __len__(self) -> int:
        if self.positions is not None:
            return len(self.positions)
        return len(self.frames) if self.frames is not None else 0

    @property
    def has_positions(self) -> bool:
        return self.positions is not None and bool(np.isfinite(self.positions).all(axis=1).any())

    @property
    def has_frames(self) -> bool:
        return self.frames is not None and bool((self.frames >= 0).any())

    def known(self, by: str) -> np.ndarray:
        """Which frames have ground truth of kind ``by`` ('position' or 'frame')."""
        if by == 'position':
            return np.isfinite(self.positions).all(axis=1) if self.positions is not None else np.zeros(0, bool)
        return self.frames >= 0 if self.frames is not None else np.zeros(0, bool)

    def subset(self, index: np.ndarray | Sequence[int]) -> 'GroundTruth':
        idx = np.asarray(index, np.int64)
        return GroundTruth(self.positions[idx] if self.positions is not None else None,
                           self.frames[idx] if self.frames is not None else None, self.source)

    @staticmethod
    def empty(n: int, source: str = 'none') -> 'GroundTruth':
        return GroundTruth(np.full((n, 3), np.nan), np.full(n, -1, np.int64), source)


@dataclass(frozen=True)
class Criterion:
    """When a map frame is a true match of a query.

    Within ``distance_m`` metres (positions), or within ``frame_tolerance`` frames (frame indices).
    ``by``: 'auto' uses positions where both sides have them, else frame indices.
    """

    distance_m: float = 25.0
    frame_tolerance: int = 2
    by: str = 'auto'

    def __post_init__(self) -> None:
        if self.by not in CRITERIA:
            raise ConfigError(f'by must be one of {", ".join(CRITERIA)}, got {self.by!r}')
        if not self.distance_m > 0:
            raise ConfigError(f'the positive distance (--distance) must be > 0, got {self.distance_m}')
        if self.frame_tolerance < 0:
            raise ConfigError(f'the frame tolerance (--frame-tolerance) must be >= 0, got {self.frame_tolerance}')

    def describe(self, by: str) -> str:
        return f'within {self.distance_m:g} m' if by == 'position' else f'within {self.frame_tolerance} frames'


def resolve_by(query: GroundTruth, reference: GroundTruth, criterion: Criterion) -> str | None:
    """Return the kind of ground truth to compare ('position' or 'frame'), or None when there is none."""
    if criterion.by == 'position':
        return 'position' if query.has_positions and reference.has_positions else None
    if criterion.by == 'frame':
        return 'frame' if query.has_frames and reference.has_frames else None
    if query.has_positions and reference.has_positions:
        return 'position'
    if query.has_frames and reference.has_frames:
        return 'frame'
    return None


def positive_matrix(query: GroundTruth, reference: GroundTruth, criterion: Criterion,
                    by: str | None = None) -> np.ndarray:
    """``[Q, M]`` bool: reference frame m is a true match of query q. Unknown frames match nothing."""
    by = by or resolve_by(query, reference, criterion)
    if by is None:
        raise BagError('no ground truth to compare (neither positions nor frame indices on both sides)')
    if by == 'position':
        assert query.positions is not None and reference.positions is not None
        q, m = query.positions, reference.positions
        assert q.ndim == 2 and q.shape[1] == 3 and m.ndim == 2 and m.shape[1] == 3
        out = np.zeros((len(q), len(m)), bool)
        limit = criterion.distance_m ** 2
        for start in range(0, len(q), 256):  # chunks keep memory at 256 x M x 3
            d2 = ((q[start:start + 256, None, :] - m[None, :, :]) ** 2).sum(-1)
            with np.errstate(invalid='ignore'):
                out[start:start + 256] = np.nan_to_num(d2, nan=np.inf) <= limit
        return out
    assert query.frames is not None and reference.frames is not None
    qf, mf = query.frames, reference.frames
    ok = (qf[:, None] >= 0) & (mf[None, :] >= 0)
    return ok & (np.abs(qf[:, None] - mf[None, :]) <= criterion.frame_tolerance)


def nearest_labels(stamps_ns: np.ndarray, sample_ns: np.ndarray, labels: np.ndarray, max_dt_ns: int) -> np.ndarray:
    """For each stamp the label of the nearest sample within ``max_dt_ns`` (-1 if none)."""
    stamps = np.asarray(stamps_ns, np.int64)
    t = np.asarray(sample_ns, np.int64)
    lab = np.asarray(labels, np.int64)
    out = np.full(len(stamps), -1, np.int64)
    if len(t) == 0:
        return out
    order = np.argsort(t, kind='stable')
    t, lab = t[order], lab[order]
    hi = np.searchsorted(t, stamps)
    for i, (s, h) in enumerate(zip(stamps, hi)):
        best = min((j for j in (h - 1, h) if 0 <= j < len(t)), key=lambda j: abs(int(t[j]) - int(s)))
        if abs(int(t[best]) - int(s)) <= max_dt_ns:
            out[i] = lab[best]
    return out


def from_poses(samples: Sequence, stamps_ns: np.ndarray, max_gap_s: float = 0.5,
               source: str = 'pose topic') -> GroundTruth:
    """Ground truth from pose samples (``boq_vpr.inputs.bags.PoseSample``) interpolated to image stamps."""
    samples = sorted(samples, key=lambda s: s.stamp_ns)
    t = np.array([s.stamp_ns for s in samples], np.int64)
    p = np.array([s.position for s in samples], np.float64).reshape(-1, 3)
    pos = lookup_poses(t, p, stamps_ns, int(max_gap_s * NS_PER_S)).positions
    _warn_unmatched(pos, source, max_gap_s)
    return GroundTruth(pos, None, source)


@dataclass
class GroundTruthTable:
    """The rows of a ground-truth file: stamps and positions and/or frame indices."""

    path: Path
    stamps_ns: np.ndarray
    positions: np.ndarray | None
    orientations: np.ndarray | None
    frames: np.ndarray | None


def load_table(path: str | Path) -> GroundTruthTable:
    """Read a ground-truth file.

    A poses CSV (``boq_vpr.inputs.poses``) with a stamp and positions and/or frame indices on every
    row, or a headerless TUM trajectory.
    """
    table = read_pose_table(path, required=('stamp', ('position', 'frame')))
    rows = table.rows
    nan3, nan4 = (math.nan,) * 3, (math.nan,) * 4
    return GroundTruthTable(
        table.path, np.array([r.stamp_ns for r in rows], np.int64),
        np.array([r.position or nan3 for r in rows], np.float64).reshape(-1, 3) if table.has('position') else None,
        np.array([r.orientation or nan4 for r in rows], np.float64).reshape(-1, 4) if table.has('orientation')
        else None,
        np.array([-1 if r.frame is None else r.frame for r in rows], np.int64) if table.has('frame') else None)


def from_table(table: GroundTruthTable, stamps_ns: np.ndarray, max_dt_s: float = 0.5,
               label_max_dt_s: float = 0.001) -> GroundTruth:
    """Make the ground truth at image stamps from a table matched by time.

    Positions come by ``boq_vpr.inputs.poses`` (interpolated between the rows around a stamp when
    both are within ``max_dt_s``, else the nearest row within it), frame indices from the nearest
    row within ``label_max_dt_s`` (frame indices belong to one image: they are not interpolated).
    """
    max_dt = int(max_dt_s * NS_PER_S)
    label_dt = int(label_max_dt_s * NS_PER_S)
    pos = frames = None
    order = np.argsort(table.stamps_ns, kind='stable')
    if table.positions is not None:
        pos = lookup_poses(table.stamps_ns[order], table.positions[order], stamps_ns, max_dt).positions
        _warn_unmatched(pos, str(table.path), max_dt_s)
    if table.frames is not None:
        frames = nearest_labels(stamps_ns, table.stamps_ns, table.frames, label_dt)
        missing = int((frames < 0).sum())
        if missing:
            log.warning('%s: %d of %d frames have no row within %.3f s; they are left out of the metrics',
                        table.path, missing, len(frames), label_max_dt_s)
    return GroundTruth(pos, frames, str(table.path))


def from_csv(path: str | Path, stamps_ns: np.ndarray, max_dt_s: float = 0.5,
             label_max_dt_s: float = 0.001) -> GroundTruth:
    """``from_table(load_table(path), ...)``."""
    return from_table(load_table(path), stamps_ns, max_dt_s, label_max_dt_s)


def from_frame_order(n: int, start: int = 0) -> GroundTruth:
    """Frame ``i`` of the sequence shows place ``start + i`` (datasets aligned by frame)."""
    return GroundTruth(None, np.arange(start, start + n, dtype=np.int64), 'frame order')


def _warn_unmatched(pos: np.ndarray, source: str, max_gap_s: float) -> None:
    missing = int((~np.isfinite(pos).all(axis=1)).sum())
    if missing:
        log.warning('%s: %d of %d frames have no pose within %.3f s; they are left out of the metrics',
                    source, missing, len(pos), max_gap_s)


def write_table(path: str | Path, stamps_ns: Sequence[int], frames: Sequence[int] | None = None,
                positions: np.ndarray | None = None, orientations: np.ndarray | None = None,
                extra: dict[str, Sequence] | None = None) -> None:
    """Write a ground-truth CSV that ``load_table`` reads (``extra``: more columns, e.g. file names)."""
    path = Path(path)
    cols = ['stamp_ns']
    if frames is not None:
        cols.append('frame')
    if positions is not None:
        cols += ['x', 'y', 'z']
    if orientations is not None:
        cols += ['qx', 'qy', 'qz', 'qw']
    extra = extra or {}
    cols += list(extra)
    with open(path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i, s in enumerate(stamps_ns):
            row: list = [int(s)]
            if frames is not None:
                row.append(int(frames[i]))
            if positions is not None:
                row += [repr(float(v)) for v in positions[i]]
            if orientations is not None:
                row += [repr(float(v)) for v in orientations[i]]
            row += [extra[c][i] for c in extra]
            w.writerow(row)
