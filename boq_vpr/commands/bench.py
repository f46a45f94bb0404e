"""``boq-vpr bench <what>``: benchmarks that print their figures and save them as JSON.

Each benchmark module in ``BENCHES`` provides ``add_arguments(parser)`` and ``run(args)``; it is
imported only when its benchmark runs or prints its help (``common.CommandParser``).
"""
from __future__ import annotations

import argparse

from .common import CommandParser

# benchmark -> (module in boq_vpr.commands, help)
BENCHES: dict[str, tuple[str, str]] = {
    'encoder': ('bench_encoder', 'encoding speed per model, backend, precision and batch size'),
    'map': ('bench_map', 'map database per index type and size: build time, memory, query latency, recall'),
    'node': ('bench_node', 'vpr_node over DDS: end-to-end latency, per-stage latency, drops and memory at given '
                           'input rates'),
    'recall': ('bench_recall', 'recall@1/5/10 of frame-aligned traversals (Nordland held-out section by default) for '
                               'models and the pixel baseline, side by side'),
    'loops': ('bench_loops', 'loop-closure filters and threshold kinds (fixed, relative, calibrated) on drives with '
                             'and without revisits: false loops, precision, recall, outcomes'),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest='bench', metavar='WHAT', parser_class=CommandParser)
    sub.required = True
    for name, (module, help_text) in BENCHES.items():
        sub.add_parser(name, help=help_text, description=help_text, module=f'{__package__}.{module}',
                       run_default='_bench_run')


def run(args: argparse.Namespace) -> int:
    return args._bench_run(args)
