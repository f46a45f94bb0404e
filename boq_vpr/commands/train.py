"""``boq-vpr train``: train or fine-tune a BoQ model; the arguments of ``python -m training train``.

The training module (Lightning, pytorch-metric-learning, pandas, scipy: ``pip install .[training]``)
is imported when the command runs, so ``boq-vpr --help`` works without those libraries.
"""
from __future__ import annotations

import argparse
import importlib

from ..errors import ConfigError

_MISSING = ('the training module is not available ({err}); (re)install the package with its training extra: '
            "pip install -e '.[training]' from the repository root")
_TRAINING_LIBS = ('lightning', 'pytorch_metric_learning', 'pandas', 'scipy')


def add_training_arguments(parser: argparse.ArgumentParser, function: str) -> None:
    """Add the arguments of a training command; without the package, explain at run time."""
    try:
        cli = importlib.import_module('training.cli')
    except ImportError as err:
        parser.add_argument('rest', nargs='*', help=argparse.SUPPRESS)
        parser.set_defaults(_training_missing=str(err))
        defaults = parser.parse_known_args

        def accept_anything(args=None, namespace=None):   # options included: the error comes at run time
            ns, _ = defaults([], namespace)
            ns.rest = list(args or [])
            return ns, []
        parser.parse_known_args = accept_anything
        return
    getattr(cli, function)(parser)


def run_training_command(args: argparse.Namespace, function: str) -> int:
    missing = getattr(args, '_training_missing', None)
    if missing is not None:
        raise ConfigError(_MISSING.format(err=missing))
    try:
        cli = importlib.import_module('training.cli')
        return getattr(cli, function)(args)
    except ModuleNotFoundError as err:
        if err.name in _TRAINING_LIBS:
            raise ConfigError(_MISSING.format(err=err)) from err
        raise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, 'add_train_arguments')


def run(args: argparse.Namespace) -> int:
    return run_training_command(args, 'run_train')
