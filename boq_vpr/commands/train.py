"""``boq-vpr train``: train or fine-tune a BoQ model; the arguments of ``python -m training train``.

The training module (Lightning, pytorch-metric-learning, pandas, scipy: ``pip install .[training]``)
is imported when the command runs, so ``boq-vpr --help`` works without those libraries.
"""
from __future__ import annotations

import argparse

from .common import add_training_arguments, run_training_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, 'add_train_arguments')


def run(args: argparse.Namespace) -> int:
    return run_training_command(args, 'run_train')
