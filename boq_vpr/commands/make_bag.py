"""``boq-vpr make-bag FOLDER [FOLDER ...] --out BAG``: image sequences -> a bag with ground truth.

Each folder is one traversal, written one after the other on one image topic (``Image`` rgb8,
or ``CompressedImage`` JPEG/PNG) at ``--rate`` frames per second, ``--gap`` seconds between
traversals. Ground truth goes with the bag: the frame index of every image (its position in its
folder, or the number in its file name), so that frame ``i`` of two traversals is the same place,
and, with ``--poses`` (one CSV per folder, ``boq_vpr.inputs.poses``: ``file`` plus ``x, y, z``,
optional ``qx, qy, qz, qw``, ``stamp``/``stamp_ns``), a PoseStamped per image on
``--pose-topic``. Both are also written to the ground-truth CSV that ``evaluate`` finds by
itself (``ground_truth.csv`` inside a rosbag2 directory, ``NAME.ground_truth.csv`` next to a
ROS 1 bag).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import BagError, ConfigError, ImageError
from ..inputs.poses import poses_by_file
from ..values import NS_PER_S

FRAME_INDEX = ('order', 'filename')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..inputs.bags import IMAGE_FORMATS, STORAGES
    parser.add_argument('folders', type=Path, nargs='+', help='image folders, one per traversal, in time order')
    parser.add_argument('--out', type=Path, required=True,
                        help='bag to write: a rosbag2 directory (sqlite3, mcap) or a .bag file (ros1); must not exist')
    parser.add_argument('--storage', default='sqlite3', choices=STORAGES, help='bag format (default: sqlite3)')
    parser.add_argument('--format', default='raw', choices=IMAGE_FORMATS,
                        help='raw: sensor_msgs/Image rgb8; jpeg, png: sensor_msgs/CompressedImage (default: raw)')
    parser.add_argument('--jpeg-quality', type=int, default=95, help='JPEG quality 1-100 (default: 95)')
    parser.add_argument('--topic', default=None,
                        help='image topic (default: /camera/image_raw, or /camera/image_raw/compressed for jpeg/png)')
    parser.add_argument('--frame-id', default='camera', help='header.frame_id of the images (default: camera)')
    parser.add_argument('--rate', type=float, default=10.0, help='frames per second (default: 10)')
    parser.add_argument('--gap', type=float, default=60.0, help='seconds between traversals (default: 60)')
    parser.add_argument('--start-time', type=float, default=1_700_000_000.0,
                        help='stamp of the first frame in seconds since the epoch (default: 1700000000)')
    parser.add_argument('--frame-index', default='order', choices=FRAME_INDEX,
                        help='ground-truth frame index: order (position in the folder, default) or filename '
                             '(the last number in the file name)')
    parser.add_argument('--first', type=int, default=0, help='skip this many images of each folder (default: 0)')
    parser.add_argument('--count', type=int, default=None, help='at most this many images per folder')
    parser.add_argument('--every', type=int, default=1, help='keep one image in N (default: 1)')
    parser.add_argument('--poses', type=Path, action='append', default=None,
                        help='poses CSV (build-map format), once per folder in the same order')
    parser.add_argument('--pose-topic', default='/ground_truth/pose',
                        help='topic of the PoseStamped ground truth (default: /ground_truth/pose)')
    parser.add_argument('--pose-frame', default='map', help='header.frame_id of the poses (default: map)')
    parser.add_argument('--bag-version', dest='bag_version', type=int, default=8, choices=(8, 9),
                        help='rosbag2 metadata version (default: 8, read by Iron and later)')


def _frame_number(path: Path) -> int:
    numbers = re.findall(r'\d+', path.stem)
    if not numbers:
        raise ConfigError(f'{path}: no number in the file name; use --frame-index order')
    return int(numbers[-1])


def run(args: argparse.Namespace) -> int:
    from ..inputs.bags import BagWriter, ground_truth_sidecar, list_topics
    from ..inputs.ground_truth import write_table
    from ..inputs.images import list_images, load_image
    if args.rate <= 0:
        raise ConfigError(f'--rate must be > 0, got {args.rate}')
    if args.every < 1 or args.first < 0 or (args.count is not None and args.count < 1):
        raise ConfigError('--every and --count must be >= 1, --first >= 0')
    if args.poses is not None and len(args.poses) != len(args.folders):
        raise ConfigError(f'give one --poses CSV per folder: {len(args.folders)} folders, {len(args.poses)} CSVs')
    if not 1 <= args.jpeg_quality <= 100:
        raise ConfigError(f'--jpeg-quality must be in 1..100, got {args.jpeg_quality}')
    topic = args.topic or ('/camera/image_raw' if args.format == 'raw' else '/camera/image_raw/compressed')
    sequences = []
    for k, folder in enumerate(args.folders):
        files = list_images(folder)
        if not files:
            raise ImageError(f'no image files in {folder}')
        order = list(range(len(files)))
        chosen = order[args.first::args.every]
        if args.count is not None:
            chosen = chosen[:args.count]
        if not chosen:
            raise ConfigError(f'{folder}: no images left after --first/--every/--count')
        frames = [(i if args.frame_index == 'order' else _frame_number(files[i])) for i in chosen]
        poses = None
        if args.poses is not None:
            table = poses_by_file(args.poses[k])
            missing = [files[i].name for i in chosen if files[i].name not in table
                       or table[files[i].name].position is None]
            if missing:
                raise ConfigError(f'{args.poses[k]}: no position for {len(missing)} images of {folder}, e.g. '
                                  f'{", ".join(missing[:3])}; every image needs a row with x, y, z')
            poses = [table[files[i].name] for i in chosen]
        sequences.append((folder, [files[i] for i in chosen], frames, poses))

    period_ns = int(round(NS_PER_S / args.rate))
    t = int(round(args.start_time * NS_PER_S))
    stamps, frames_all, seq_all, files_all, pos_all, ori_all = [], [], [], [], [], []
    total = sum(len(s[1]) for s in sequences)
    with BagWriter(args.out, storage=args.storage, version=args.bag_version) as writer, \
            tqdm(total=total, unit='img', desc='make-bag', file=sys.stderr, disable=None) as bar:
        for k, (folder, files, frames, poses) in enumerate(sequences):
            if k:
                t += int(round(args.gap * NS_PER_S)) - period_ns
            for j, (path, frame) in enumerate(zip(files, frames)):
                stamp = t
                if poses is not None and poses[j].stamp_ns is not None:
                    stamp = int(poses[j].stamp_ns)
                    if stamps and stamp <= stamps[-1]:
                        raise ConfigError(f'{args.poses[k]}: stamp of {path.name} is not after the previous image; '
                                          'stamps in a poses CSV must increase (and follow earlier folders)')
                writer.add_image(topic, load_image(path), stamp, args.frame_id, args.format, args.jpeg_quality)
                if poses is not None:
                    writer.add_pose(args.pose_topic, stamp, poses[j].position, poses[j].orientation,
                                    args.pose_frame)
                    pos_all.append(poses[j].position)
                    ori_all.append(poses[j].orientation or (0.0, 0.0, 0.0, 1.0))
                stamps.append(stamp)
                frames_all.append(frame)
                seq_all.append(k)
                files_all.append(str(path))
                t = stamp + period_ns
                bar.update(1)
    sidecar = ground_truth_sidecar(args.out)
    write_table(sidecar, stamps, frames=frames_all,
                positions=np.array(pos_all) if pos_all else None,
                orientations=np.array(ori_all) if ori_all else None,
                extra={'sequence': seq_all, 'file': files_all})
    try:
        topics = list_topics(args.out)
    except BagError as err:  # pragma: no cover - we just wrote it
        raise BagError(f'{args.out} was written but cannot be read back: {err}') from err
    print(f'wrote {args.out} ({args.storage}): ' + '; '.join(str(t) for t in topics.values()))
    print(f'ground truth (stamp_ns, frame{", x, y, z" if pos_all else ""}) -> {sidecar}')
    return 0
