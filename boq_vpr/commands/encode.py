"""``boq-vpr encode FOLDER``: descriptors of every image in a folder.

Writes ``descriptors.npy`` ([N, D] float32), ``files.csv`` (row index, relative file name) and
``summary.json`` into ``--out``. Unreadable or non-image files are reported and skipped.
"""
from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import ImageError
from .common import add_encoder_args, encoder_from_args, iter_loaded, write_json

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('folder', type=Path, help='folder of images (png, jpg, ...)')
    parser.add_argument('--out', type=Path, required=True, help='output folder')
    parser.add_argument('--recursive', action='store_true', help='include sub-folders')
    parser.add_argument('--all-files', action='store_true',
                        help='try every file, not only known image suffixes (failures are skipped)')
    add_encoder_args(parser)


def run(args: argparse.Namespace) -> int:
    from ..inputs.images import list_images
    if args.all_files:
        if not args.folder.is_dir():
            raise ImageError(f'not a folder: {args.folder}')
        it = args.folder.rglob('*') if args.recursive else args.folder.iterdir()
        files = sorted(p for p in it if p.is_file())
    else:
        files = list_images(args.folder, recursive=args.recursive)
    if not files:
        raise ImageError(f'no image files in {args.folder}')
    encoder = encoder_from_args(args)
    skipped: list[dict] = []
    names: list[str] = []
    blocks: list[np.ndarray] = []

    def images():
        for path, image in iter_loaded(files, skipped):
            names.append(str(path.relative_to(args.folder)))
            yield image

    t0 = time.perf_counter()
    with tqdm(total=len(files), unit='img', desc='encode', file=sys.stderr, disable=None) as bar:
        for block in encoder.encode_iter(images()):
            blocks.append(block)
            bar.update(len(block))
    elapsed = time.perf_counter() - t0
    desc = np.concatenate(blocks) if blocks else np.zeros((0, encoder.descriptor_dim), np.float32)
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / 'descriptors.npy', desc)
    with open(args.out / 'files.csv', 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['index', 'file'])
        w.writerows(enumerate(names))
    summary = {
        'folder': str(args.folder), 'files_seen': len(files), 'encoded': len(names), 'skipped': len(skipped),
        'skipped_files': skipped, 'descriptor_shape': list(desc.shape), 'seconds': round(elapsed, 3),
        'ms_per_image': encoder.times.per_image_ms(), 'encoder': encoder.describe(),
        'fingerprint': encoder.fingerprint,
    }
    write_json(args.out / 'summary.json', summary)
    print(f'encoded {len(names)} of {len(files)} files ({len(skipped)} skipped) -> {args.out / "descriptors.npy"} '
          f'{tuple(desc.shape)} in {elapsed:.1f} s with {encoder.name}')
    for s in skipped:
        print(f'  skipped: {s["reason"]}')
    return 0 if names else 1
