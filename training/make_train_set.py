"""Build a GSV-Cities-layout training set from recordings with poses.

Input: one or more traversals, each either

- an image folder and a poses CSV (``boq_vpr.inputs.poses``) with a header and the columns
  ``image`` or ``file`` (file name relative to the folder) and either ``x,y`` (metres, any fixed
  frame) or ``lat,lon`` (WGS84 degrees), optionally ``yaw`` / ``heading`` (degrees) and ``stamp``
  (seconds); or
- a bag (rosbag2 or ROS 1, read with ``boq_vpr.inputs.bags``): an image topic and a pose topic
  (Odometry / PoseStamped / PoseWithCovarianceStamped, metres), the pose interpolated to each
  image stamp, the yaw taken from the orientation.

Places: clusters of frames within ``radius`` metres of a centre (and within ``max_yaw_diff``
degrees of its heading when headings are given), each seen in at least ``images_per_place``
frames from at least ``min_traversals`` traversals, centres at least ``min_spacing`` metres
apart so that distinct places do not overlap. Centres are chosen greedily, preferring the ones
seen from the most traversals, then by the most frames. A frame belongs to at most one place;
each place keeps up to ``max_images_per_place`` frames, taken round-robin over the traversals,
nearest first.

Output: ``OUT/Dataframes/<city>.csv`` and ``OUT/Images/<city>/*.jpg`` (GSV-Cities names; ``year``
and ``month`` count traversals so that each traversal is a distinct "time"; ``panoid`` is
``<traversal>-<frame>``). Positions in metres are written as lat/lon of a local tangent plane at
``origin`` (degrees); ``x,y`` columns keep the metric positions.
"""
from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from boq_vpr.errors import ConfigError, DatasetError, ImageError
from boq_vpr.inputs.images import load_image
from boq_vpr.inputs.poses import read_pose_table
from boq_vpr.values import NS_PER_S

from .gsv import COLUMNS, image_name

log = logging.getLogger(__name__)

EARTH_RADIUS_M = 6378137.0


@dataclass
class Traversal:
    """One recording: an image folder and its poses CSV, or a bag (see the module docstring)."""

    images: Path | None = None
    poses: Path | None = None
    name: str | None = None
    bag: Path | None = None
    image_topic: str | None = None     # bag: the only image topic when None
    pose_topic: str | None = None      # bag: the only pose topic when None
    every: int = 1                     # bag: keep one image message in ``every``
    max_pose_gap_s: float = 0.5        # bag: largest gap between pose samples to interpolate over

    def __post_init__(self) -> None:
        folder = self.images is not None or self.poses is not None
        if (self.bag is not None) == folder or (folder and (self.images is None or self.poses is None)):
            raise ConfigError('a traversal is an image folder with a poses CSV, or a bag')

    @property
    def source(self) -> Path:
        return self.bag if self.bag is not None else self.poses

    def default_name(self) -> str:
        if self.name:
            return self.name
        return self.bag.stem if self.bag is not None else self.images.name


@dataclass
class Frame:
    traversal: int
    row: int                           # CSV data row, or the bag's message index on the image topic
    path: Path | None                  # image file (folder traversals)
    x: float
    y: float
    yaw: float | None
    stamp: float | None


@dataclass
class BuildSummary:
    out: Path
    city: str
    frames: int = 0
    traversals: int = 0
    places: int = 0
    images: int = 0
    candidate_clusters_too_small: int = 0
    frames_unused: int = 0
    per_traversal_images: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def yaw_degrees(q: Sequence[float]) -> float:
    """Heading (rotation about z, degrees) of a quaternion (x, y, z, w)."""
    x, y, z, w = q
    return math.degrees(math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z)))


def read_bag_frames(t: Traversal, index: int) -> tuple[list[Frame], str]:
    """Frames of a bag traversal: image stamps with interpolated positions (metres, 'xy').

    Images without a pose within ``max_pose_gap_s`` are left out with a warning.
    """
    from boq_vpr.inputs import bags
    from boq_vpr.inputs.poses import lookup_poses
    poses = sorted(bags.read_poses(t.bag, t.pose_topic), key=lambda p: p.stamp_ns)
    if not poses:
        raise DatasetError(f'{t.bag}: the pose topic has no messages')
    images = list(bags.iter_images(t.bag, t.image_topic, decode=False, every=t.every))
    if not images:
        raise DatasetError(f'{t.bag}: the image topic has no messages')
    stamps = np.array([im.stamp_ns for im in images], np.int64)
    found = lookup_poses([p.stamp_ns for p in poses], [p.position for p in poses], stamps,
                         int(t.max_pose_gap_s * 1e9), [p.orientation for p in poses])
    frames = []
    for im, pos, quat, near in zip(images, found.positions, found.orientations, found.index):
        if near < 0 or not np.isfinite(pos).all():
            continue
        frames.append(Frame(index, im.index, None, float(pos[0]), float(pos[1]),
                            yaw_degrees(tuple(quat)), im.stamp_ns / 1e9))
    if len(frames) < len(images):
        log.warning('%s: %d of %d images have no pose within %.2f s and are left out',
                    t.bag, len(images) - len(frames), len(images), t.max_pose_gap_s)
    if not frames:
        raise DatasetError(f'{t.bag}: no image has a pose within {t.max_pose_gap_s} s')
    return frames, 'xy'


def read_frames(t: Traversal, index: int) -> tuple[list[Frame], str]:
    """Frames of one traversal with metric positions ('xy') or geographic ones ('latlon')."""
    if t.bag is not None:
        return read_bag_frames(t, index)
    if not t.poses.is_file():
        raise DatasetError(f'{t.poses}: poses CSV not found')
    if not t.images.is_dir():
        raise DatasetError(f'{t.poses}: image folder not found (poses {t.poses})')
    table = read_pose_table(t.poses, required=('file', ('position', 'latlon')))
    kind = 'xy' if table.has('position') else 'latlon'
    frames = []
    missing = []
    for row, rec in enumerate(table.rows):
        path = t.images / rec.file
        if not path.is_file():
            missing.append(f'{t.poses}:{rec.line}: image {path} not found')
            continue
        if kind == 'xy':
            if rec.position is None:
                raise DatasetError(f'{t.poses}:{rec.line}: column x: the value is missing (short row?)')
            x, y = rec.position[0], rec.position[1]
        else:
            if rec.latlon is None:
                raise DatasetError(f'{t.poses}:{rec.line}: column lat: the value is missing (short row?)')
            y, x = rec.latlon
        stamp = rec.stamp_ns / NS_PER_S if rec.stamp_ns is not None else None
        frames.append(Frame(index, row, path, x, y, rec.yaw_deg, stamp))
    if missing:
        more = f' ... and {len(missing) - 5} more' if len(missing) > 5 else ''
        raise DatasetError(f'{len(missing)} images listed in {t.poses} are missing: ' + '; '.join(missing[:5]) + more)
    if not frames:
        raise DatasetError(f'{t.poses}: no frames')
    return frames, kind


def _to_local(lat: np.ndarray, lon: np.ndarray, lat0: float, lon0: float) -> tuple[np.ndarray, np.ndarray]:
    x = np.radians(lon - lon0) * EARTH_RADIUS_M * math.cos(math.radians(lat0))
    y = np.radians(lat - lat0) * EARTH_RADIUS_M
    return x, y


def _to_latlon(x: np.ndarray, y: np.ndarray, lat0: float, lon0: float) -> tuple[np.ndarray, np.ndarray]:
    lat = lat0 + np.degrees(y / EARTH_RADIUS_M)
    lon = lon0 + np.degrees(x / (EARTH_RADIUS_M * math.cos(math.radians(lat0))))
    return lat, lon


def _angle_diff(a: np.ndarray, b: float) -> np.ndarray:
    return np.abs((a - b + 180.0) % 360.0 - 180.0)


def cluster_places(xy: np.ndarray, traversal: np.ndarray, yaw: np.ndarray | None, radius: float,
                   min_spacing: float, images_per_place: int, min_traversals: int,
                   max_images_per_place: int, max_yaw_diff: float | None = None) -> tuple[list[np.ndarray], int]:
    """Cluster frames into places.

    Returns the places as arrays of frame indices (see the module docstring) and the number of
    candidate clusters that had too few frames or traversals.
    """
    from scipy.spatial import cKDTree
    assert xy.ndim == 2 and xy.shape[1] == 2 and len(traversal) == len(xy)
    tree = cKDTree(xy)
    neighbours = tree.query_ball_point(xy, r=radius)

    def members(c: int, free: np.ndarray) -> np.ndarray:
        idx = np.array([j for j in neighbours[c] if free[j]], dtype=np.int64)
        if idx.size and yaw is not None and max_yaw_diff is not None and not np.isnan(yaw[c]):
            idx = idx[_angle_diff(yaw[idx], yaw[c]) <= max_yaw_diff]
        return idx

    cell = max(min_spacing, 1e-9)
    grid: dict[tuple[int, int], list[np.ndarray]] = {}

    def near_centre(p: np.ndarray) -> bool:
        gx, gy = int(math.floor(p[0] / cell)), int(math.floor(p[1] / cell))
        return any(np.hypot(*(q - p)) < min_spacing
                   for dx in (-1, 0, 1) for dy in (-1, 0, 1) for q in grid.get((gx + dx, gy + dy), ()))

    free = np.ones(len(xy), bool)
    scores = []
    for c in range(len(xy)):
        m = members(c, free)
        scores.append((len(np.unique(traversal[m])), len(m), -c))
    order = sorted(range(len(xy)), key=lambda c: scores[c], reverse=True)
    places: list[np.ndarray] = []
    too_small = 0
    for c in order:
        if not free[c]:
            continue
        if min_spacing > 0 and near_centre(xy[c]):
            continue
        m = members(c, free)
        if len(m) < images_per_place or len(np.unique(traversal[m])) < min_traversals:
            too_small += 1
            continue
        # round-robin over traversals, nearest first
        dist = np.linalg.norm(xy[m] - xy[c], axis=1)
        per_trav = []
        for tv in np.unique(traversal[m]):
            sel = traversal[m] == tv
            per_trav.append([int(j) for j in m[sel][np.argsort(dist[sel], kind='stable')]])
        chosen: list[int] = []
        while len(chosen) < max_images_per_place and any(per_trav):
            for lst in per_trav:
                if lst and len(chosen) < max_images_per_place:
                    chosen.append(int(lst.pop(0)))
        chosen_arr = np.array(chosen, dtype=np.int64)
        free[m] = False       # the whole cluster is taken, not only the kept frames: no overlap
        grid.setdefault((int(math.floor(xy[c, 0] / cell)), int(math.floor(xy[c, 1] / cell))), []).append(xy[c])
        places.append(chosen_arr)
    return places, too_small


_SAFE = re.compile(r'[^A-Za-z0-9-]+')


def _write_jpeg(path: Path, rgb: np.ndarray, quality: int) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]):
        raise DatasetError(f'{path}: cannot be written')


def _write_images(traversals: Sequence[Traversal], frames: list[Frame], targets: dict[int, Path], quality: int) -> None:
    """Write the chosen frames as JPEG: folder images by path, bag images in one pass per bag."""
    by_traversal: dict[int, dict[int, Path]] = {}
    for j, out in targets.items():
        by_traversal.setdefault(frames[j].traversal, {})[frames[j].row] = out
        if frames[j].path is not None:
            try:
                image = load_image(frames[j].path)
            except ImageError as err:
                raise DatasetError(f'{traversals[frames[j].traversal].poses} row {frames[j].row}: {err}') from err
            _write_jpeg(out, image, quality)
    for ti, wanted in by_traversal.items():
        t = traversals[ti]
        if t.bag is None:
            continue
        from boq_vpr.inputs import bags
        for im in bags.iter_images(t.bag, t.image_topic, decode=True, every=t.every):
            out = wanted.pop(im.index, None)
            if out is not None:
                _write_jpeg(out, im.rgb, quality)
        if wanted:
            raise DatasetError(f'{t.bag}: {len(wanted)} image messages could not be read the second time '
                               f'(first: message {min(wanted)})')


def build_train_set(traversals: Sequence[Traversal], out: str | Path, city: str = 'Recording',
                    radius: float = 5.0, min_spacing: float | None = None, images_per_place: int = 4,
                    min_traversals: int | None = None, max_images_per_place: int = 8,
                    max_yaw_diff: float | None = 45.0, origin: tuple[float, float] = (0.0, 0.0),
                    jpeg_quality: int = 95, overwrite: bool = False) -> BuildSummary:
    """Write a GSV-Cities-layout dataset (one city) into ``out``; see the module docstring.

    ``min_spacing`` defaults to 2 x ``radius``; ``min_traversals`` to 2 when there are several
    traversals, else 1.
    """
    out = Path(out)
    if not re.fullmatch(r'[A-Za-z0-9]+', city):
        raise ConfigError(f'city {city!r}: use letters and digits only (it is part of every file name)')
    if radius <= 0 or images_per_place < 1 or max_images_per_place < images_per_place:
        raise ConfigError(f'need radius > 0 and 1 <= images_per_place <= max_images_per_place; got radius {radius}, '
                          f'images_per_place {images_per_place}, max_images_per_place {max_images_per_place}')
    if not traversals:
        raise ConfigError('no traversal given')
    min_spacing = 2.0 * radius if min_spacing is None else min_spacing
    min_traversals = (2 if len(traversals) > 1 else 1) if min_traversals is None else min_traversals
    csv_out = out / 'Dataframes' / f'{city}.csv'
    img_dir = out / 'Images' / city
    if csv_out.exists() and not overwrite:
        raise DatasetError(f'{csv_out} exists; choose another --city or output folder, or overwrite')

    frames: list[Frame] = []
    kinds = set()
    names = []
    for i, t in enumerate(traversals):
        f, kind = read_frames(t, i)
        frames += f
        kinds.add(kind)
        names.append(_SAFE.sub('-', t.default_name()) or f't{i}')
    if len(kinds) > 1:
        raise DatasetError('all poses CSVs must use the same coordinates (all x,y or all lat,lon)')
    kind = kinds.pop()
    a = np.array([[fr.x, fr.y] for fr in frames], dtype=np.float64)
    if kind == 'latlon':
        lat0, lon0 = float(np.mean(a[:, 1])), float(np.mean(a[:, 0]))
        x, y = _to_local(a[:, 1], a[:, 0], lat0, lon0)
        xy = np.stack([x, y], axis=1)
        lat, lon = a[:, 1], a[:, 0]
    else:
        xy = a
        lat, lon = _to_latlon(a[:, 0], a[:, 1], origin[0], origin[1])
    trav = np.array([fr.traversal for fr in frames])
    yaw = (np.array([np.nan if fr.yaw is None else fr.yaw for fr in frames])
           if any(fr.yaw is not None for fr in frames) else None)

    places, too_small = cluster_places(xy, trav, yaw, radius, min_spacing, images_per_place, min_traversals,
                                       max_images_per_place, max_yaw_diff)
    if not places:
        raise DatasetError(f'no place found: no cluster within {radius} m holds {images_per_place} frames from '
                           f'{min_traversals} traversal(s) ({len(frames)} frames); try a larger radius')
    img_dir.mkdir(parents=True, exist_ok=True)
    csv_out.parent.mkdir(parents=True, exist_ok=True)
    summary = BuildSummary(out, city, frames=len(frames), traversals=len(traversals), places=len(places),
                           candidate_clusters_too_small=too_small)
    rows = []
    targets: dict[int, Path] = {}      # frame index -> output file
    for pid, members in enumerate(places):
        for j in members:
            fr = frames[j]
            year, month = 2000 + fr.traversal // 12, fr.traversal % 12 + 1
            north = int(round(fr.yaw)) % 360 if fr.yaw is not None else 0
            panoid = f'{names[fr.traversal]}-{fr.row:06d}'
            la, lo = round(float(lat[j]), 7), round(float(lon[j]), 7)
            name = image_name(city, pid, year, month, north, la, lo, panoid)
            targets[j] = img_dir / name
            rows.append([pid, year, month, north, city, la, lo, panoid, f'{xy[j, 0]:.3f}', f'{xy[j, 1]:.3f}'])
            per_traversal = summary.per_traversal_images
            per_traversal[names[fr.traversal]] = per_traversal.get(names[fr.traversal], 0) + 1
    _write_images(traversals, frames, targets, jpeg_quality)
    with open(csv_out, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(list(COLUMNS) + ['x', 'y'])
        w.writerows(rows)
    summary.images = len(rows)
    summary.frames_unused = len(frames) - len(rows)
    log.info('wrote %d places, %d images to %s (%d frames unused, %d candidate clusters too small)',
             summary.places, summary.images, out, summary.frames_unused, too_small)
    return summary
