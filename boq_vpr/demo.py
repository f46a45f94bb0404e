"""``python -m boq_vpr.demo``: the main job on a fresh machine, end to end without a robot.

Writes the Nordland frames that ``resnet18_nordland`` never saw in training (frames 2400-3575:
the summer traversal, then winter over the same track, 1 frame per second) into a rosbag2, runs
the bag through the encoder, map database and loop-closure detector in slam mode with the
shipped ``config/vpr.yaml`` (model, encoder and detector settings), exactly as the node would,
prints the loop closures it accepted with their precision and recall, and writes metrics,
plots and a summary to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli import main as cli_main
from .commands.bench_recall import NORDLAND_HELD_OUT
from .commands.evaluate import _fmt

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / 'shared' / 'data' / 'nordland_trimmed'
PARAMS = ROOT / 'config' / 'vpr.yaml'
HELD_OUT_FIRST = NORDLAND_HELD_OUT.start   # first frame not used to train resnet18_nordland


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', type=Path, default=DEFAULT_DATA,
                        help='folder with summer/ and winter/ image sequences (default: the Nordland sample)')
    parser.add_argument('--out', type=Path, default=Path('out/demo'), help='output folder (default: out/demo)')
    parser.add_argument('--first', type=int, default=HELD_OUT_FIRST,
                        help=f'first frame of each traversal (default: {HELD_OUT_FIRST}, the held-out section)')
    parser.add_argument('--count', type=int, default=None, help='frames per traversal (default: to the end)')
    parser.add_argument('--params', type=Path, default=PARAMS, help='node parameters (default: config/vpr.yaml)')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='override a detector parameter, as in evaluate (repeatable)')
    args = parser.parse_args(argv)
    seqs = [args.data / 'summer', args.data / 'winter']
    if not all(s.is_dir() for s in seqs):
        print(f'demo: expected {seqs[0]} and {seqs[1]}; pass --data PATH', file=sys.stderr)
        return 2
    bag = args.out / 'bag'
    if bag.exists():
        print(f'demo: reusing {bag} (delete it to rebuild)')
    else:
        cmd = ['make-bag', *map(str, seqs), '--out', str(bag), '--first', str(args.first), '--rate', '1', '--gap', '60']
        if args.count:
            cmd += ['--count', str(args.count)]
        rc = cli_main(cmd)
        if rc:
            return rc
    out = args.out / 'eval'
    cmd = ['evaluate', str(bag), '--out', str(out), '--params', str(args.params), '--encoder-from-params',
           '--frame-tolerance', '2', '--title', 'Nordland held-out, summer then winter']
    for s in args.set:
        cmd += ['--set', s]
    rc = cli_main(cmd)
    if rc:
        return rc
    m = json.loads((out / 'metrics.json').read_text())
    op, setup = m.get('operating_point', {}), m.get('setup', {})
    r1 = m.get('recall_at_k', {}).get('1')
    print(f'\ndemo: model {setup.get("model")} ({"random weights" if setup.get("random_weights") else "trained weights"}), '
          f'detector from {args.params.name}')
    print(f'  frames {m["counts"]["frames"]}; loop closures accepted {op.get("predicted")}: {op.get("tp")} true, '
          f'{op.get("fp")} false -> precision {_fmt(op.get("precision"))}, recall {_fmt(op.get("recall"))} '
          f'(of {op.get("positives")} frames with a true loop)')
    print(f'  retrieval R@1 {_fmt(r1)}; AUC-PR {_fmt(m.get("precision_recall", {}).get("auc_pr"))}, '
          f'max recall at 100% precision {_fmt(m.get("precision_recall", {}).get("max_recall_at_100_precision"))}')
    print(f'  metrics, plots and summary in {out} (see summary.md)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
