"""``boq-vpr build-map``: build a map database directory.

From an image folder (optionally with a poses CSV) or a bag (optionally with a pose topic) -> a map
database directory.

Poses CSV (``boq_vpr.inputs.poses``): a header row with a ``file`` column (image path relative to
the folder) and any of ``stamp`` (seconds) or ``stamp_ns``, ``x y z`` (position), ``qx qy qz qw``
(orientation), ``frame_id``. Images without a row get no pose; rows without an image are reported. Without
stamps, keyframe ``i`` gets the stamp ``i / --rate`` seconds.

Bags (rosbag2 directory, ``.db3``/``.mcap`` file, ROS 1 ``.bag``): every image of ``--topic``
becomes a keyframe at its header stamp; ``--pose-topic`` (Odometry, PoseStamped or
PoseWithCovarianceStamped) gives each keyframe its pose at the image stamp (``boq_vpr.inputs.poses``: interpolated
between the two poses around it when both are within ``--max-pose-dt``, else the nearest within it),
as the node does with odometry.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from ..errors import ConfigError, ImageError, MapError
from ..inputs.poses import PoseRow, poses_by_file
from ..values import NS_PER_S
from .common import add_encoder_args, encoder_from_args, iter_loaded, parse_index_options, write_json

if TYPE_CHECKING:
    from ..map import MapDatabase

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..map import INDEX_DEFAULTS, INDEX_TYPES
    parser.add_argument('folder', type=Path, metavar='SOURCE',
                        help='folder of images (png, jpg, ...), sorted by name, or a bag (rosbag2 directory, '
                             '.db3/.mcap file, ROS 1 .bag)')
    parser.add_argument('--out', type=Path, required=True, help='map directory to write')
    parser.add_argument('--poses', type=Path, default=None,
                        help='CSV with a header: file, and optionally stamp|stamp_ns, x, y, z, qx, qy, qz, qw, '
                             'frame_id')
    parser.add_argument('--topic', default=None, help='bag: image topic (default: the only image topic)')
    parser.add_argument('--pose-topic', default=None,
                        help='bag: pose topic (Odometry, PoseStamped, PoseWithCovarianceStamped) for keyframe poses')
    parser.add_argument('--max-pose-dt', type=float, default=0.1,
                        help='bag: largest time difference between an image and its pose in seconds (default 0.1)')
    parser.add_argument('--rate', type=float, default=1.0,
                        help='frames per second used for stamps when the CSV gives none (default: 1)')
    parser.add_argument('--recursive', action='store_true', help='include sub-folders')
    parser.add_argument('--session', default='', help='session label of these keyframes (default: folder name)')
    parser.add_argument('--index-type', default='flat', choices=list(INDEX_TYPES),
                        help='flat (exact, default), pca, fp16, hnsw, ivfpq')
    parser.add_argument('--index-option', action='append', default=[], metavar='KEY=VALUE',
                        help='index option, repeatable; per type: ' +
                             '; '.join(f'{t}: {", ".join(o) or "-"}' for t, o in INDEX_DEFAULTS.items()) +
                             '; all: pca_dim, train_size')
    parser.add_argument('--thumbnails', action='store_true',
                        help='store grayscale thumbnails for geometric verification')
    parser.add_argument('--thumbnail-size', type=int, default=160, help='thumbnail longer side in pixels (default 160)')
    parser.add_argument('--append', action='store_true', help='add to an existing map at --out (same model)')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing map at --out')
    parser.add_argument('--summary', type=Path, default=None, help='also write the summary as JSON here')
    add_encoder_args(parser)


def run(args: argparse.Namespace) -> int:
    from ..inputs import bags
    from ..inputs.images import list_images
    from ..map import MANIFEST, MapDatabase, foreign_entries
    if args.append and args.overwrite:
        raise ConfigError('--append and --overwrite exclude each other')
    if args.rate <= 0:
        raise ConfigError(f'--rate must be > 0, got {args.rate}')
    from_bag = bags.is_bag(args.folder)
    if from_bag and args.poses:
        raise ConfigError('--poses is for image folders; a bag takes its poses from --pose-topic')
    if not from_bag and (args.topic or args.pose_topic):
        raise ConfigError(f'--topic/--pose-topic are for bags; {args.folder} is not a bag '
                          '(a rosbag2 directory with metadata.yaml, a .db3/.mcap file or a ROS 1 .bag)')
    files = [] if from_bag else list_images(args.folder, recursive=args.recursive)
    if not from_bag and not files:
        raise ImageError(f'no image files in {args.folder}')
    poses = poses_by_file(args.poses) if args.poses else {}
    options = parse_index_options(args.index_option)
    exists = (args.out / MANIFEST).exists()
    if exists and not (args.append or args.overwrite):
        raise MapError(f'{args.out} already holds a map; pass --append to add to it or --overwrite to replace it')
    if not exists and (args.out.is_file() or foreign_entries(args.out)):   # before hours of encoding
        raise MapError(f'{args.out} is a file or a directory with other files; choose a new or empty directory')
    encoder = encoder_from_args(args)
    session = args.session or (args.folder.resolve().stem if from_bag else args.folder.resolve().name)
    if exists and args.append:
        db = MapDatabase.load(args.out, fingerprint=encoder.fingerprint, descriptor_dim=encoder.descriptor_dim)
        if args.index_type != db.index_type or options:
            log.warning('appending to a %s map: --index-type/--index-option are ignored', db.index_type)
    else:
        db = MapDatabase(encoder.descriptor_dim, encoder.fingerprint, args.index_type,
                         thumbnail_size=args.thumbnail_size, **options)
    t0 = time.perf_counter()
    base_index = len(db)
    if from_bag:
        stats = _add_bag(args, encoder, db, session)
    else:
        stats = _add_images(args, files, poses, encoder, db, session)
    encode_s = time.perf_counter() - t0
    added = len(db) - base_index
    if added == 0:
        raise ImageError(f'no image of {args.folder} could be read; nothing to save')
    if not db.is_trained:
        log.warning('the %s index needs %d vectors to train and has %d; they are stored untrained and searched '
                    'exactly until the map grows (or use --index-option train_size=N)', db.index_type,
                    db.train_size, len(db))
    t1 = time.perf_counter()
    db.save(args.out)
    save_s = time.perf_counter() - t1
    disk = sum(p.stat().st_size for p in args.out.rglob('*') if p.is_file())
    summary = {
        'map': str(args.out), 'source': str(args.folder), 'session': session, **stats,
        'added': added, 'keyframes': len(db), 'index_type': db.index_type,
        'index_options': db.index_options, 'trained': db.is_trained, 'descriptor_dim': db.descriptor_dim,
        'fingerprint': db.fingerprint, 'thumbnails': bool(args.thumbnails), 'encode_s': round(encode_s, 3),
        'save_s': round(save_s, 3), 'ms_per_image': encoder.times.per_image_ms(), 'disk_bytes': disk,
        'sessions': db.sessions(), 'encoder': encoder.describe(),
    }
    if args.summary:
        write_json(args.summary, summary)
    print(f'map {args.out}: added {added} of {stats["seen"]} images ({stats["skipped"]} skipped), {len(db)} '
          f'keyframes, {db.descriptor_dim}-D {db.index_type} index, {disk / 2**20:.1f} MiB on disk; '
          f'encoded in {encode_s:.1f} s ({encoder.name}), saved in {save_s:.2f} s')
    if args.poses or args.pose_topic:
        print(f'  poses: {added - stats["without_pose"]} images with a pose, {stats["without_pose"]} without' +
              (f', {stats["unused_pose_rows"]} CSV rows unused' if args.poses else ''))
    for s in stats.get('skipped_files', []):
        print(f'  skipped: {s["reason"]}')
    return 0


def _add_images(args: argparse.Namespace, files: list[Path], poses: dict[str, PoseRow], encoder, db: MapDatabase,
                session: str) -> dict:
    """Encode an image folder into ``db``; returns the counts of the summary."""
    from ..map import Keyframe
    skipped: list[dict] = []
    used_rows: set[str] = set()
    without_pose = 0
    batch: list[np.ndarray] = []
    kfs: list = []

    def flush() -> None:
        if batch:
            db.add(encoder.encode(batch), kfs, thumbnails=list(batch) if args.thumbnails else None)
            bar.update(len(batch))
            batch.clear()
            kfs.clear()

    base_index = len(db)
    with tqdm(total=len(files), unit='img', desc='build-map', file=sys.stderr, disable=None) as bar:
        for i, (path, image) in enumerate(iter_loaded(files, skipped)):
            name = path.relative_to(args.folder).as_posix()
            pose = poses.get(name)
            if pose is not None:
                used_rows.add(name)
            elif args.poses:
                without_pose += 1
            stamp = pose.stamp_ns if pose and pose.stamp_ns is not None else \
                int(round((base_index + i) * 1e9 / args.rate))
            kfs.append(Keyframe(-1, stamp, pose.position if pose else None, pose.orientation if pose else None,
                                pose.frame_id if pose else '', name, session))
            batch.append(image)
            if len(batch) == encoder.batch_size:
                flush()
        flush()
        bar.update(len(skipped))
    unused = sorted(set(poses) - used_rows)
    if unused:
        log.warning('%d poses CSV rows name no loaded image, e.g. %s', len(unused), unused[:3])
    return {'seen': len(files), 'skipped': len(skipped), 'skipped_files': skipped, 'without_pose': without_pose,
            'unused_pose_rows': len(unused)}


def _add_bag(args: argparse.Namespace, encoder, db: MapDatabase, session: str) -> dict:
    """Encode the images of one bag topic into ``db``, with poses from ``--pose-topic``."""
    from ..inputs import bags
    from ..map import Keyframe
    from ..evaluation import read_frames
    from ..inputs.poses import lookup_poses
    frames = read_frames(args.folder, encoder, args.topic, keep_images=args.thumbnails)
    n = len(frames)
    pose_of = np.full(n, -1, np.int64)
    samples: list = []
    if args.pose_topic:
        samples = sorted(bags.read_poses(args.folder, args.pose_topic), key=lambda s: s.stamp_ns)
        found = lookup_poses([s.stamp_ns for s in samples], [s.position for s in samples], frames.stamps_ns,
                             int(round(args.max_pose_dt * NS_PER_S)),
                             [s.orientation for s in samples])
        pose_of = found.index
        if (pose_of < 0).any():
            log.warning('%d of %d images have no %s pose within %.3f s; they are stored without a pose',
                        int((pose_of < 0).sum()), n, args.pose_topic, args.max_pose_dt)
    kfs = []
    for i in range(n):
        pose = samples[pose_of[i]] if pose_of[i] >= 0 else None
        orientation = found.orientations[i] if pose is not None else None
        kfs.append(Keyframe(-1, int(frames.stamps_ns[i]), tuple(found.positions[i]) if pose else None,
                            tuple(orientation) if orientation is not None and np.isfinite(orientation).all() else None,
                            pose.frame_id if pose else frames.frame_ids[i],
                            f'{frames.source}:{frames.topic}#{int(frames.indices[i])}', session))
    thumbs = [frames.images.get(i) for i in range(n)] if args.thumbnails else None
    db.add(frames.descriptors, kfs, thumbnails=thumbs)
    skipped = int(frames.report.get('skipped', 0))
    return {'seen': n + skipped, 'skipped': skipped, 'skipped_files': frames.report.get('skipped_frames', []),
            'topic': frames.topic,
            'without_pose': int((pose_of < 0).sum()) if args.pose_topic else n}
