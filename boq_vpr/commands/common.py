"""Arguments shared by subcommands that encode images."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..backends import backend_names
from ..models.config import MODEL_CONFIGS
from ..preprocessing import RESIZE_MODES


def size_arg(text: str) -> tuple[int, int]:
    """'384' -> (384, 384); '322x434' -> (322, 434) (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split('x')]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected N or HxW, got {text!r}') from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f'expected N or HxW with positive sides, got {text!r}')
    return parts[0], parts[1]


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group('model')
    g.add_argument('--model', default='resnet50_16384', choices=sorted(MODEL_CONFIGS),
                   help='model configuration (default: resnet50_16384)')
    g.add_argument('--weights', type=Path, default=None,
                   help='weight file (official .pth or our checkpoint); without it, random weights')
    g.add_argument('--image-size', type=size_arg, default=None,
                   help='network input HxW (default: the configuration\'s, 384 ResNet50, 322 DINOv2)')


def add_encoder_args(parser: argparse.ArgumentParser) -> None:
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


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + '\n')
