"""``boq-vpr``: the command line.

Each subcommand lives in ``boq_vpr.commands.<module>`` and provides ``add_arguments(parser)`` and
``run(args) -> int``; a module is imported only when its subcommand runs or prints its help
(``commands.common.CommandParser``), so that ``boq-vpr --help`` stays fast.
"""
from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .commands.common import CommandParser
from .errors import BoqVprError

# subcommand -> (module in boq_vpr.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    'info': ('info', 'show a model configuration and a weight file summary'),
    'encode': ('encode', 'encode an image folder into descriptors (.npy + CSV of file names)'),
    'bench': ('bench', 'benchmarks that print and save their figures as JSON'),
    'train': ('train', 'train or fine-tune a BoQ model (GSV-Cities layout; needs the training extra)'),
    'make-train-set': ('make_train_set', 'build a GSV-Cities-layout training set from images with poses'),
    'build-map': ('build_map', 'build a map database from an image folder (optionally with a poses CSV)'),
    'export': ('export', 'export a model to ONNX (and INT8 ONNX or a TensorRT engine) for deployment'),
    'verify': ('verify', 'compare backends on real images: descriptor cosine and top-1 retrieval agreement'),
    'make-bag': ('make_bag', 'turn image sequences (+ poses or frame indices) into a bag with ground truth'),
    'evaluate': ('evaluate', 'score loop closures on bags (or a recorded live run) against ground truth'),
    'replay': ('replay', 'publish a bag over DDS at its recorded rate (x factor), optionally recording topics'),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='boq-vpr', description='BoQ visual place recognition for SLAM loop closures.')
    parser.add_argument('--version', action='version', version=f'boq-vpr {__version__}')
    parser.add_argument('-v', '--verbose', action='count', default=0, help='debug log output (the default shows info)')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', parser_class=CommandParser)
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text, module=f'{__package__}.commands.{module}')
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if isinstance(getattr(args, 'model', None), str) and hasattr(args, 'weights'):
        # --model NAME without --weights: the weights shipped with NAME (resnet18_nordland), if any
        from .models.checkpoint import resolve_weights
        args.weights = resolve_weights(args.model, args.weights)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format='%(levelname)s %(name)s: %(message)s')
    # FAISS, imported when a command runs, notes at info level which CPU extensions it loaded
    logging.getLogger('faiss.loader').setLevel(logging.WARNING)
    try:
        return int(args._run(args) or 0)
    except BoqVprError as err:
        print(f'boq-vpr {args.command}: error: {err}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
