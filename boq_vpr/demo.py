"""``python -m boq_vpr.demo``: the main job on a fresh machine.

Encodes a folder of images (default: the Nordland sample frames next to the repository, when
present) with the chosen model and prints the summary; pass ``--weights`` for real descriptors.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli import main as cli_main

DEFAULT_FOLDER = Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'nordland_trimmed' / 'summer'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--folder', type=Path, default=DEFAULT_FOLDER, help='image folder to encode')
    parser.add_argument('--out', type=Path, default=Path('out/demo'), help='output folder')
    parser.add_argument('--model', default='resnet18_1024', help='model configuration')
    parser.add_argument('--weights', type=Path, default=None, help='weight file')
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        print(f'demo: no image folder at {args.folder}; pass --folder PATH', file=sys.stderr)
        return 2
    cmd = ['encode', str(args.folder), '--out', str(args.out), '--model', args.model]
    if args.weights:
        cmd += ['--weights', str(args.weights)]
    return cli_main(cmd)


if __name__ == '__main__':
    sys.exit(main())
