"""``python -m boq_vpr.demo``: the main job on a fresh machine, end to end without a robot.

Writes the Nordland frames that ``resnet18_nordland`` never saw in training (frames 2400-3575,
shipped with the package in ``boq_vpr/data/nordland_heldout``: the summer traversal, then winter
over the same track, 1 frame per second) into a rosbag2, runs the bag through the encoder, map
database and loop-closure detector in slam mode with the shipped ``config/vpr.yaml`` (model,
encoder and detector settings), exactly as the node would, prints the loop closures it accepted
with their precision and recall, and writes metrics, plots and a summary to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli import main as cli_main
from .errors import DatasetError
from .evaluation.report import fmt
from .inputs.images import list_images
from .inputs.nordland import NORDLAND_HELD_OUT, frame_name
from .inputs.sample_data import HELD_OUT_DIR, held_out_dir

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / 'config' / 'vpr.yaml'


def first_held_out(folder: Path) -> int:
    """Return the position of the first held-out Nordland frame (2400) in ``folder``.

    It is 0 in the shipped copy, 2400 in the whole trimmed set; 0 for a folder without that frame
    (not Nordland).
    """
    names = [p.name for p in list_images(folder)]
    first = frame_name(NORDLAND_HELD_OUT.start)
    return names.index(first) if first in names else 0


def default_params(out: Path) -> Path:
    """Return the parameters file of the demo: ``config/vpr.yaml`` of the repository.

    From an installed package without it, the same defaults written to ``out`` (``defaults_yaml()``
    is what config/vpr.yaml holds).
    """
    if PARAMS.is_file():
        return PARAMS
    from .ros.parameters import defaults_yaml
    out.mkdir(parents=True, exist_ok=True)
    path = out / 'vpr.yaml'
    path.write_text(defaults_yaml())
    return path


def _shown(path: Path) -> Path:
    """``path`` relative to the working directory when it is below it (shorter to read)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', type=Path, default=None,
                        help='folder with summer/ and winter/ image sequences (default: the Nordland frames '
                             f'2400-3575 shipped with the package, {HELD_OUT_DIR})')
    parser.add_argument('--out', type=Path, default=Path('out/demo'), help='output folder (default: out/demo)')
    parser.add_argument('--first', type=int, default=None,
                        help='images of each traversal to skip (default: up to Nordland frame 2400, the first one '
                             'resnet18_nordland never saw, where the folder holds it; else 0)')
    parser.add_argument('--count', type=int, default=None, help='frames per traversal (default: to the end)')
    parser.add_argument('--params', type=Path, default=None, help='node parameters (default: config/vpr.yaml)')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='override a detector parameter, as in evaluate (repeatable)')
    args = parser.parse_args(argv)
    if args.data is None:
        try:
            args.data = held_out_dir()
        except DatasetError as err:
            print(f'demo: {err}; or pass --data PATH', file=sys.stderr)
            return 2
    seqs = [args.data / 'summer', args.data / 'winter']
    if not all(s.is_dir() for s in seqs):
        print(f'demo: expected {seqs[0]} and {seqs[1]}; pass --data PATH', file=sys.stderr)
        return 2
    if args.first is None:
        args.first = first_held_out(seqs[0])
    if args.params is None:
        args.params = default_params(args.out)
    print(f'demo: {_shown(seqs[0])} then {_shown(seqs[1])}, from image {args.first} of each'
          + (f', {args.count} frames each' if args.count else ''))
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
    weights = 'random weights' if setup.get('random_weights') else 'trained weights'
    print(f'\ndemo: model {setup.get("model")} ({weights}), '
          f'detector from {args.params.name}')
    print(f'  frames {m["counts"]["frames"]}; loop closures accepted {op.get("predicted")}: {op.get("tp")} true, '
          f'{op.get("fp")} false -> precision {fmt(op.get("precision"))}, recall {fmt(op.get("recall"))} '
          f'(of {op.get("positives")} frames with a true loop)')
    print(f'  retrieval R@1 {fmt(r1)}; AUC-PR {fmt(m.get("precision_recall", {}).get("auc_pr"))}, '
          f'max recall at 100% precision {fmt(m.get("precision_recall", {}).get("max_recall_at_100_precision"))}')
    print(f'  metrics, plots and summary in {out} (see summary.md)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
