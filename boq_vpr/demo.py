"""``python -m boq_vpr.demo``: the main job on a fresh machine, end to end without a robot.

Turns the Nordland sample frames next to the repository (summer traversal, then winter over the
same track) into a rosbag2, runs it through the encoder, map database and loop-closure detector in
slam mode, exactly as the node would, and writes metrics, plots and a summary to ``--out``.
Pass ``--weights`` (and ``--model``) for real descriptors; without them the weights are random
and the figures only show that the pipeline works.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / 'shared' / 'data' / 'nordland_trimmed'


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA,
                        help='folder with summer/ and winter/ image sequences (default: the Nordland sample)')
    parser.add_argument('--out', type=Path, default=Path('out/demo'), help='output folder')
    parser.add_argument('--every', type=int, default=8, help='use every n-th frame (default: 8)')
    parser.add_argument('--model', default='resnet18_1024', help='model configuration (default: resnet18_1024)')
    parser.add_argument('--weights', type=Path, default=None, help='weight file')
    args = parser.parse_args(argv)
    seqs = [args.data / 'summer', args.data / 'winter']
    if not all(s.is_dir() for s in seqs):
        print(f'demo: expected {seqs[0]} and {seqs[1]}; pass --data PATH', file=sys.stderr)
        return 2
    bag = args.out / 'bag'
    if not bag.exists():
        rc = cli_main(['make-bag', *map(str, seqs), '--out', str(bag), '--every', str(args.every)])
        if rc:
            return rc
    cmd = ['evaluate', str(bag), '--out', str(args.out / 'eval'), '--model', args.model,
           '--params', str(ROOT / 'config' / 'vpr.yaml'), '--frame-tolerance', '4']
    if args.weights:
        cmd += ['--weights', str(args.weights)]
    rc = cli_main(cmd)
    if rc == 0:
        print(f'demo: metrics, plots and summary in {args.out / "eval"} (see summary.md)')
    return rc


if __name__ == '__main__':
    sys.exit(main())
