"""Arguments and argument parsing shared by the subcommands, and their JSON output.

Heavy libraries (torch through the model and backend registries) are imported when a parser is
built or an argument is checked, not when this module is imported.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError, ImageError

log = logging.getLogger(__name__)


class CommandParser(argparse.ArgumentParser):
    """The parser of one subcommand, whose module is imported when the parser is used.

    ``module`` provides ``add_arguments(parser)`` and ``run(args)``: they are added (``run`` as the
    default ``run_default``) when the parser first parses or prints its help, so that the parser of
    ``boq-vpr`` lists its subcommands without importing them. Without ``module``, a plain parser.
    """

    def __init__(self, *args, module: str = '', run_default: str = '_run', **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._module, self._run_default, self._loaded = module, run_default, not module

    def load(self) -> bool:
        """Add the subcommand's arguments; False when they are there already."""
        if self._loaded:
            return False
        self._loaded = True
        mod = importlib.import_module(self._module)
        mod.add_arguments(self)
        self.set_defaults(**{self._run_default: mod.run})
        return True

    def parse_known_args(self, args=None, namespace=None):
        if self.load():   # add_arguments may have replaced this method on the instance
            return self.parse_known_args(args, namespace)
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self.load()
        return super().format_usage()

    def format_help(self) -> str:
        self.load()
        return super().format_help()


def size_arg(text: str) -> tuple[int, int]:
    """Parse '384' -> (384, 384) and '322x434' -> (322, 434) (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split('x')]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected N or HxW, got {text!r}') from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f'expected N or HxW with positive sides, got {text!r}')
    return parts[0], parts[1]


def frame_range(text: str) -> range:
    """Parse '2400:3576' -> range(2400, 3576) (frame indices in file order, end exclusive)."""
    try:
        a, b = (int(x) for x in text.split(':'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected START:END frame indices, got {text!r}') from None
    if not 0 <= a < b:
        raise argparse.ArgumentTypeError(f'need 0 <= START < END, got {text!r}')
    return range(a, b)


def parse_model_spec(spec: str) -> tuple[str, str | None]:
    """Parse 'NAME' -> (NAME, None) and 'NAME:WEIGHTS' -> (NAME, WEIGHTS); ConfigError for an unknown NAME."""
    from ..models.config import MODEL_CONFIGS
    name, _, weights = spec.partition(':')
    if name not in MODEL_CONFIGS:
        raise ConfigError(f'unknown model configuration {name!r} in {spec!r}; '
                          f'valid: {", ".join(sorted(MODEL_CONFIGS))}')
    return name, (weights or None)


# the precisions a backend may be asked for, besides auto (the backend's choice)
PRECISIONS = ('fp32', 'fp16', 'bf16', 'int8')


def parse_backend_spec(text: str) -> tuple[str, str]:
    """Parse ``'onnxruntime:int8'`` -> ('onnxruntime', 'int8'); no precision -> 'auto'."""
    from ..backends import BACKENDS
    name, _, precision = text.partition(':')
    if name not in BACKENDS:
        raise ConfigError(f'unknown backend {name!r} in {text!r}; valid: {", ".join(sorted(BACKENDS))}')
    precision = precision or 'auto'
    if precision not in ('auto', *PRECISIONS):
        raise ConfigError(f'unknown precision {precision!r} in {text!r}; valid: auto, {", ".join(PRECISIONS)}')
    return name, precision


def parse_index_options(items: list[str]) -> dict:
    """Parse ['nlist=1024', 'pq_m=32'] -> {'nlist': 1024, 'pq_m': 32}."""
    out = {}
    for item in items:
        key, sep, value = item.partition('=')
        if not sep or not key.strip():
            raise ConfigError(f'--index-option expects KEY=VALUE, got {item!r}')
        try:
            out[key.strip()] = int(value)
        except ValueError:
            raise ConfigError(f'--index-option {key}: value must be an integer, got {value!r}') from None
    return out


def add_model_args(parser: argparse.ArgumentParser) -> None:
    from ..models.config import MODEL_CONFIGS
    g = parser.add_argument_group('model')
    g.add_argument('--model', default='resnet50_16384', choices=sorted(MODEL_CONFIGS),
                   help='model configuration (default: resnet50_16384)')
    g.add_argument('--weights', type=Path, default=None,
                   help='weight file (official .pth or our checkpoint); without it, random weights')
    g.add_argument('--image-size', type=size_arg, default=None,
                   help='network input HxW (default: the configuration\'s, 384 ResNet50, 322 DINOv2)')


def add_encoder_args(parser: argparse.ArgumentParser) -> None:
    from ..backends import backend_names
    from ..preprocessing import RESIZE_MODES
    add_model_args(parser)
    g = parser.add_argument_group('encoder')
    g.add_argument('--backend', default='auto', choices=backend_names(), help='encoder backend (default: auto)')
    g.add_argument('--device', default='auto', help='cpu, cuda, cuda:N or auto (default)')
    g.add_argument('--precision', default='auto',
                   help='auto (default: bf16 on CPUs with native bf16 where the backend has it, else fp32), '
                        'fp32, fp16, bf16 or int8, as the backend supports')
    g.add_argument('--batch-size', type=int, default=8, help='images per batch (default: 8)')
    g.add_argument('--resize-mode', default='fixed', choices=RESIZE_MODES,
                   help='fixed: resize to the input size; keep_aspect: fix the height, keep the aspect ratio')


def encoder_from_args(args: argparse.Namespace):
    from ..encoder import Encoder
    return Encoder(args.model, weights=args.weights, backend=args.backend, device=args.device,
                   batch_size=args.batch_size, image_size=args.image_size, resize_mode=args.resize_mode,
                   precision=args.precision, **getattr(args, 'backend_options', {}))


def iter_loaded(files: list[Path], skipped: list[dict]) -> Iterator[tuple[Path, object]]:
    """Yield (path, image) for readable images; append the others to ``skipped``."""
    from ..inputs.images import load_image
    for path in files:
        try:
            yield path, load_image(path)
        except ImageError as err:
            log.warning('skipping %s', err)
            skipped.append({'file': str(path), 'reason': str(err)})


# the training module (``python -m training``), whose commands ``boq-vpr train`` and ``make-train-set`` run
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
    """Run a training command; ConfigError saying how to install it when the training module is missing."""
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


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + '\n')
