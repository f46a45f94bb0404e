"""``boq-vpr make-train-set``: a GSV-Cities-layout training set from image folders with poses.

The arguments of ``python -m training make-train-set``.
"""
from __future__ import annotations

import argparse

from .common import add_training_arguments, run_training_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, 'add_make_train_set_arguments')


def run(args: argparse.Namespace) -> int:
    return run_training_command(args, 'run_make_train_set')
