"""Drives whose truth is known, for measuring the loop-closure detector.

For ``boq-vpr bench loops`` and the detector's tests), and the detector run over one of them
(``run_setting``).

- ``nordland_drive``: ``summer`` (the Nordland summer traversal alone, 3576 frames at 1 s per
  frame: no place is revisited, so every loop closure is false) or ``two_season`` (the held-out
  section, frames 2400-3575, in summer, then in winter after a gap of ``GAP_S``: every winter frame
  revisits a summer place) as descriptors of a given encoder;
- ``synthetic_drive``: a route that never revisits a place, with a shared component as trained
  descriptors have (a slowly varying random walk plus a common vector);
- ``places_drive``: distinct places, each in view for a while, seen by a camera at a given rate and
  driven several times, each lap at its own speed;
- ``DRIVE_TABLE`` / ``table_drive``: every drive of the drives table of ``boq-vpr bench loops``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..inputs.nordland import NORDLAND_FRAMES, NORDLAND_HELD_OUT, load_frames

HELD_OUT = NORDLAND_HELD_OUT
SUMMER_ALL = range(0, NORDLAND_FRAMES)
DRIVES = ('summer', 'synthetic', 'two_season')
GAP_S = 60.0        # seconds between traversals


def drive_frames(descriptors: np.ndarray, stamps_s: np.ndarray, places: np.ndarray, name: str, fingerprint: str):
    """Make the ``Frames`` of a drive.

    Descriptors at ``stamps_s`` (seconds), each with its place (or frame) number as ground truth.
    """
    from ..inputs.ground_truth import GroundTruth
    from .frames import Frames
    n = len(descriptors)
    return Frames(np.ascontiguousarray(descriptors, np.float32), np.round(np.asarray(stamps_s) * 1e9).astype(np.int64),
                  np.arange(n), ['camera'] * n, name, '/camera/image_raw', fingerprint,
                  GroundTruth(None, np.asarray(places, np.int64), 'frame index'))


def nordland_drive(drive: str, encoder, data: Path, every: int = 1):
    """``summer`` or ``two_season`` as Frames of ``encoder``'s descriptors (1 s per frame)."""
    if drive == 'summer':
        idx = np.asarray(SUMMER_ALL[::every])
        desc = encoder.encode(load_frames(data / 'summer', SUMMER_ALL[::every]))
        stamps = np.arange(len(idx), dtype=np.float64) * every
    elif drive == 'two_season':
        idx1 = np.asarray(HELD_OUT[::every])
        summer = encoder.encode(load_frames(data / 'summer', HELD_OUT[::every]))
        winter = encoder.encode(load_frames(data / 'winter', HELD_OUT[::every]))
        desc = np.concatenate([summer, winter])
        t = np.arange(len(idx1), dtype=np.float64) * every
        stamps = np.concatenate([t, t[-1] + GAP_S + t])
        idx = np.concatenate([idx1, idx1])
    else:
        raise ConfigError(f'unknown Nordland drive {drive!r}')
    return drive_frames(desc, stamps, idx, f'nordland_{drive}', encoder.fingerprint)


def synthetic_drive(dim: int = 2048, n: int = 3000, rate_hz: float = 10.0, shared: float = 0.8,
                    smoothness: float = 0.98, seed: int = 0):
    """Make a route without revisits.

    Descriptors: ``shared`` x a common unit vector + a slowly varying AR(1) random walk
    (neighbouring frames alike, distant ones unrelated), L2-normalized.
    """
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(dim).astype(np.float32)
    common /= np.linalg.norm(common)
    walk = np.empty((n, dim), np.float32)
    z = rng.standard_normal(dim).astype(np.float32)
    innovation = np.sqrt(1 - smoothness ** 2)
    for i in range(n):
        z = smoothness * z + innovation * rng.standard_normal(dim).astype(np.float32)
        walk[i] = z
    walk /= np.linalg.norm(walk, axis=1, keepdims=True)
    desc = shared * common + np.sqrt(1 - shared ** 2) * walk
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    return drive_frames(desc, np.arange(n) / rate_hz, np.arange(n), 'synthetic_no_revisit', f'synthetic-{dim}')


def places_drive(places: int = 60, dim: int = 256, rate_hz: float = 10.0, seconds_per_place: float = 1.0,
                 laps: int = 2, noise: float = 0.4, shared: float = 0.5, seed: int = 0,
                 lap_speeds: tuple[float, ...] | None = None, odometry: bool = False, stop_s: float = 0.0,
                 place_m: float = 10.0):
    """Make a route of ``places`` distinct places driven ``laps`` times.

    Each of the ``places`` places is in view for ``seconds_per_place``, seen by a camera at
    ``rate_hz`` and driven ``laps`` times without a break. A frame is its place's random unit vector
    plus independent noise of norm ``noise`` (so two views of one place have cosine about 1 / (1 +
    noise^2)), mixed with a ``shared`` common component as trained descriptors have. ``lap_speeds``:
    the speed of each lap relative to the first (1.25: each place in view 20% less long). ``stop_s``:
    on the last lap the vehicle stands still this long at the middle place. ``odometry``: each
    frame's position on a circular route (``place_m`` metres a place) as odometry. Ground truth: the
    place number (a correct match is the same place).
    """
    rng = np.random.default_rng(seed)
    place_vec = rng.standard_normal((places, dim))
    place_vec /= np.linalg.norm(place_vec, axis=1, keepdims=True)
    common = rng.standard_normal(dim)
    common /= np.linalg.norm(common)
    speeds = lap_speeds or (1.0,) * laps
    place, along = [], []
    for lap, v in enumerate(speeds[:laps]):
        per = max(1, int(round(seconds_per_place * rate_hz / v)))
        for p in range(places):
            progress = (np.arange(per) + 0.5) / per
            if stop_s > 0 and lap == laps - 1 and p == places // 2:
                progress = np.r_[progress[:per // 2], np.full(int(round(stop_s * rate_hz)), progress[per // 2]),
                                 progress[per // 2:]]
            place.append(np.full(progress.size, p))
            along.append((lap * places + p + progress) * place_m)
    place = np.concatenate(place)
    n = place.size
    jitter = rng.standard_normal((n, dim))
    jitter *= noise / np.linalg.norm(jitter, axis=1, keepdims=True)
    own = place_vec[place] + jitter
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    desc = shared * common + np.sqrt(1 - shared ** 2) * own
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    frames = drive_frames(desc.astype(np.float32), np.arange(n) / rate_hz, place,
                          f'places_{places}x{laps}_{rate_hz:g}hz', f'synthetic-{dim}')
    if odometry:
        radius = places * place_m / (2 * np.pi)
        angle = np.concatenate(along) / radius
        frames.odom = np.stack([radius * np.cos(angle), radius * np.sin(angle), np.zeros(n)], axis=1)
    return frames


# Every drive of the drives table (--only drives): (name, what it is, correct within this many
# ground-truth frames or places)
DRIVE_TABLE = (
    ('two_season', 'Nordland 2400-3575, summer then winter, 1 fps', 2),
    ('summer', 'Nordland summer alone (no revisit), 1 fps', 2),
    ('summer_10fps', 'Nordland summer alone (no revisit), 10 fps', 2),
    ('synthetic', 'synthetic route without revisits, 3000 frames at 10 Hz, 2048-D', 2),
    ('small_map', '75 distinct places (64-D) driven twice at 1 Hz', 0),
    ('camera_10hz', '60 places, each in view 1 s, driven twice, 10 Hz camera', 0),
    ('camera_30hz', '60 places, each in view 1 s, driven twice, 30 Hz camera', 0),
    ('slower_0.8', 'as camera_10hz, the second pass at 0.8x speed (frames repeated)', 0),
    ('faster_1.25', 'as camera_10hz, the second pass at 1.25x speed (frames skipped)', 0),
    ('half_speed', 'as camera_10hz, the second pass at 0.5x speed with a 20 s stop, no odometry', 0),
    ('half_speed_odometry', 'as half_speed, with odometry (sequences aligned by travelled distance)', 0),
    ('double_speed_odometry', 'as camera_10hz, the second pass at 2x speed, with odometry', 0),
)
# the settings the defaults were chosen from (--only drives): false_alarm_rate x temporal_consistency
DRIVE_SETTINGS = {'false_alarm_rate': (0.01, 0.001), 'temporal_consistency': (1, 2, 3)}


def table_drive(name: str, encoder, data: Path):
    """Make the frames of one drive of ``DRIVE_TABLE``."""
    if name in ('two_season', 'summer'):
        return nordland_drive(name, encoder, data)
    if name == 'summer_10fps':
        frames = nordland_drive('summer', encoder, data)
        frames.stamps_ns = np.round(np.arange(len(frames)) * 0.1e9).astype(np.int64)
        return frames
    if name == 'synthetic':
        return synthetic_drive(2048)
    if name == 'small_map':
        return places_drive(75, 64, rate_hz=1.0, laps=2, noise=0.4, shared=0.0)
    if name in ('camera_10hz', 'camera_30hz'):
        return places_drive(60, 256, rate_hz=10.0 if name == 'camera_10hz' else 30.0, laps=2)
    if name in ('half_speed', 'half_speed_odometry'):
        return places_drive(60, 256, rate_hz=10.0, laps=2, lap_speeds=(1.0, 0.5), stop_s=20.0,
                            odometry=name.endswith('odometry'))
    if name == 'double_speed_odometry':
        return places_drive(60, 256, rate_hz=10.0, laps=2, lap_speeds=(1.0, 2.0), odometry=True)
    speed = float(name.split('_')[1])
    return places_drive(60, 256, rate_hz=10.0, laps=2, lap_speeds=(1.0, speed))


def run_setting(frames, config, tolerance: int = 2) -> dict:
    """Run the detector over ``frames`` in slam mode with ``config``.

    Returns counts, false loops, precision, recall and the outcome of every frame. ``tolerance``: a
    match is correct within this many ground-truth frame (or place) numbers.
    """
    from ..inputs.ground_truth import Criterion
    from .runs import run_slam
    from .scoring import score_run
    run = run_slam(frames, config, k=1, retrieval=False, progress=False)
    scored = score_run(run, frames, frames, Criterion(frame_tolerance=tolerance, by='frame'), ks=(1,))
    op = scored.metrics['operating_point']
    queries = len(run.query_index)
    return {'frames': len(frames), 'keyframes': int((run.map_ids >= 0).sum()), 'queries': queries,
            'accepted': op['predicted'], 'tp': op['tp'], 'fp': op['fp'], 'positives': op['positives'],
            'precision': op['precision'], 'recall': op['recall'],
            'false_per_query': op['fp'] / queries if queries else float('nan'),
            'false_per_1000_keyframes': 1000.0 * op['fp'] / max(1, int((run.map_ids >= 0).sum())),
            'outcomes': run.outcome_counts, 'places': _places_closed(run, frames, tolerance)}


def _places_closed(run, frames, tolerance: int = 0) -> dict:
    """Count the places revisited and those closed correctly or wrongly.

    Returns the places revisited (a query keyframe with a keyframe of its place outside the
    exclusion window), how many of them got a correct loop closure (within ``tolerance``
    ground-truth numbers) at least once, and how many places got a wrong one.
    """
    gt = frames.gt.frames
    first_id: dict[int, int] = {}
    for m in np.flatnonzero(run.map_ids >= 0).tolist():
        first_id.setdefault(int(gt[m]), int(run.map_ids[m]))
    revisited, right, wrong = set(), set(), set()
    for q, cut, m in zip(run.query_index.tolist(), run.cut.tolist(), run.accepted.tolist()):
        g = int(gt[q])
        if g in first_id and (cut < 0 or first_id[g] < cut):
            revisited.add(g)
        if m >= 0:
            (right if abs(int(gt[m]) - g) <= tolerance else wrong).add(g)
    return {'revisited': len(revisited), 'closed': len(right & revisited), 'wrong': len(wrong)}
