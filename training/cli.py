"""Command line of the training module.

``python -m training {train,make-train-set}`` and ``boq-vpr {train,make-train-set}`` (same
arguments).

Importing this module loads neither Lightning nor pandas; they load when a command runs.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from boq_vpr.errors import BoqVprError, ConfigError

from .config import PRESETS, load_config, model_names

log = logging.getLogger(__name__)


def _size(text: str) -> list[int]:
    parts = text.lower().split('x')
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected N or HxW, got {text!r}') from None
    if len(vals) == 1:
        vals *= 2
    if len(vals) != 2 or min(vals) <= 0:
        raise argparse.ArgumentTypeError(f'expected N or HxW with positive sides, got {text!r}')
    return vals


def _devices(text: str):
    if text == 'auto':
        return text
    if ',' in text:
        return [int(x) for x in text.split(',') if x]
    try:
        return int(text)
    except ValueError:
        return text


# flag dest -> dotted config key (applied only when the flag is given)
_FLAG_KEYS = {
    'model': 'model', 'init_weights': 'init_weights', 'backbone_weights': 'backbone_weights',
    'trainable_blocks': 'trainable_blocks', 'gradient_checkpointing': 'gradient_checkpointing',
    'data': 'data.train_root', 'cities': 'data.cities', 'places_per_batch': 'data.places_per_batch',
    'images_per_place': 'data.images_per_place', 'image_size': 'data.image_size',
    'val_image_size': 'data.val_image_size', 'workers': 'data.num_workers',
    'lr': 'optim.lr', 'epochs': 'trainer.max_epochs', 'precision': 'trainer.precision',
    'accelerator': 'trainer.accelerator', 'devices': 'trainer.devices', 'num_nodes': 'trainer.num_nodes',
    'strategy': 'trainer.strategy', 'seed': 'trainer.seed', 'out': 'trainer.out_dir', 'resume': 'trainer.resume',
}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``train``: a preset or YAML file, then overrides (command line > file > defaults)."""
    parser.add_argument('--config', default=None,
                        help=f'preset ({", ".join(sorted(PRESETS))}) or YAML file; default: built-in defaults')
    parser.add_argument('--set', dest='assignments', action='append', default=[], metavar='KEY=VALUE',
                        help='override any key, e.g. --set optim.warmup_steps=300 (repeatable; YAML values)')
    parser.add_argument('--dry-run', action='store_true',
                        help='print the resolved configuration and summary, then stop')
    g = parser.add_argument_group('frequent overrides (each equals a --set)')
    g.add_argument('--model', default=None,
                   help=f'model configuration (model); one of {", ".join(model_names())}')
    g.add_argument('--init-weights', default=None, help='BoQ weights to fine-tune from (init_weights)')
    g.add_argument('--backbone-weights', default=None,
                   help='ImageNet backbone weights file: torchvision ResNet or DINOv2 (backbone_weights)')
    g.add_argument('--trainable-blocks', type=int, default=None,
                   help='last backbone blocks trained: ResNet stages or DINOv2 blocks (trainable_blocks)')
    g.add_argument('--gradient-checkpointing', action='store_true', default=None,
                   help='recompute backbone activations in the backward pass (gradient_checkpointing)')
    g.add_argument('--data', default=None, help='GSV-Cities-layout training set (data.train_root)')
    g.add_argument('--cities', nargs='+', default=None, help='cities to train on (data.cities; default all)')
    g.add_argument('--val', action='append', default=None, metavar='LAYOUT:PATH[:PREFIX]',
                   help='validation set, repeatable, replaces data.val_sets: pitts:DIR, npy:DIR[:PREFIX], msls:DIR')
    g.add_argument('--places-per-batch', type=int, default=None, help='P (data.places_per_batch)')
    g.add_argument('--images-per-place', type=int, default=None, help='K (data.images_per_place)')
    g.add_argument('--image-size', type=_size, default=None, help='training input N or HxW (data.image_size)')
    g.add_argument('--val-image-size', type=_size, default=None, help='validation input (data.val_image_size)')
    g.add_argument('--workers', type=int, default=None, help='data loader workers (data.num_workers)')
    g.add_argument('--lr', type=float, default=None, help='learning rate (optim.lr)')
    g.add_argument('--epochs', type=int, default=None, help='epochs (trainer.max_epochs)')
    g.add_argument('--precision', default=None, help='auto, 16-mixed, bf16-mixed, 32-true (trainer.precision)')
    g.add_argument('--accelerator', default=None, help='auto, cpu, gpu (trainer.accelerator)')
    g.add_argument('--devices', type=_devices, default=None, help='auto, N or 0,1,... (trainer.devices)')
    g.add_argument('--num-nodes', type=int, default=None, help='nodes for multi-node DDP (trainer.num_nodes)')
    g.add_argument('--strategy', default=None, help='auto, ddp, ... (trainer.strategy)')
    g.add_argument('--seed', type=int, default=None, help='random seed (trainer.seed)')
    g.add_argument('--out', default=None, help='output folder (trainer.out_dir)')
    g.add_argument('--resume', default=None, help='Lightning checkpoint to resume from (trainer.resume)')


def config_from_args(args: argparse.Namespace):
    """Build the TrainConfig of parsed ``train`` arguments."""
    from .config import set_dotted
    from .valsets import parse_valset_spec
    overrides: dict = {}
    for dest, key in _FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides = set_dotted(overrides, key, value)
    if args.val:
        specs = [parse_valset_spec(v) for v in args.val]
        overrides = set_dotted(overrides, 'data.val_sets', [s.__dict__ for s in specs])
    return load_config(args.config, overrides=overrides, assignments=args.assignments)


def run_train(args: argparse.Namespace) -> int:
    from .config import dump_yaml
    from .run import TrainingRun
    from lightning.pytorch.utilities import rank_zero_only
    config = config_from_args(args)
    run = TrainingRun(config)
    main_process = rank_zero_only.rank == 0     # DDP starts this command once per process
    if main_process:
        print(run.summary(), flush=True)
    if args.dry_run:
        print('--- resolved configuration ---')
        print(dump_yaml(config), end='')
        return 0
    result = run.fit()
    if not main_process:
        return 0
    print(f'trained in {result.out_dir}: {len(result.history)} epochs, {result.train_images_per_s:.1f} images/s '
          f'in training steps ({result.fit_images_per_s:.1f} over the whole fit)'
          + (f', peak GPU memory {result.peak_gpu_memory_mib:.0f} MiB' if result.peak_gpu_memory_mib else ''))
    for h in result.history:
        val = ' '.join(f'{n}: R@1 {v["R1"]:.3f}' for n, v in h.get('val', {}).items())
        print(f'  epoch {h["epoch"]:3d}  loss {h["train_loss"]:.4f}  lr {h["lr"]:.2e}  {val}')
    if result.untrained_recalls:
        print('untrained model: ' + json.dumps(result.untrained_recalls))
    if result.final_recalls:
        print('last epoch:      ' + json.dumps(result.final_recalls))
    print(f'weights: {result.weights} (model configuration: {result.out_dir / "model_config.json"})')
    return 0


def add_make_train_set_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--traversal', nargs=2, action='append', default=[], metavar=('IMAGES_DIR', 'POSES_CSV'),
                        help='an image folder and its poses CSV (image,x,y or image,lat,lon; optional yaw, stamp); '
                             'repeat for each traversal')
    parser.add_argument('--bag', action='append', default=[], type=Path,
                        help='a bag (rosbag2 directory/.db3/.mcap or ROS 1 .bag) with images and poses; repeatable')
    parser.add_argument('--image-topic', default=None, help='image topic of the bags (default: the only one)')
    parser.add_argument('--pose-topic', default=None,
                        help='pose topic of the bags: Odometry, PoseStamped, PoseWithCovarianceStamped '
                             '(default: the only one)')
    parser.add_argument('--every', type=int, default=1, help='bags: keep one image message in N (default 1)')
    parser.add_argument('--out', type=Path, required=True, help='output folder (GSV-Cities layout)')
    parser.add_argument('--city', default='Recording', help='city name of this set (letters and digits)')
    parser.add_argument('--radius', type=float, default=5.0, help='place radius in metres (default 5)')
    parser.add_argument('--min-spacing', type=float, default=None,
                        help='metres between place centres (default 2 x radius)')
    parser.add_argument('--images-per-place', '-K', type=int, default=4, help='minimum images per place (default 4)')
    parser.add_argument('--max-images-per-place', type=int, default=8, help='images kept per place (default 8)')
    parser.add_argument('--min-traversals', type=int, default=None,
                        help='distinct traversals per place (default 2 with several traversals, else 1)')
    parser.add_argument('--max-yaw-diff', type=float, default=45.0,
                        help='degrees between a frame\'s heading and the place\'s, when headings are given '
                             '(default 45)')
    parser.add_argument('--origin', type=float, nargs=2, default=(0.0, 0.0), metavar=('LAT', 'LON'),
                        help='lat/lon of x=y=0 for metric poses (names need lat/lon; default 0 0)')
    parser.add_argument('--jpeg-quality', type=int, default=95, help='JPEG quality of the written images')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing dataframe of this city')


def run_make_train_set(args: argparse.Namespace) -> int:
    from .make_train_set import Traversal, build_train_set
    traversals = [Traversal(Path(images), Path(poses)) for images, poses in args.traversal]
    traversals += [Traversal(bag=b, image_topic=args.image_topic, pose_topic=args.pose_topic, every=args.every)
                   for b in args.bag]
    if not traversals:
        raise ConfigError('give at least one --traversal IMAGES_DIR POSES_CSV or --bag BAG')
    s = build_train_set(traversals, args.out, city=args.city, radius=args.radius, min_spacing=args.min_spacing,
                        images_per_place=args.images_per_place, min_traversals=args.min_traversals,
                        max_images_per_place=args.max_images_per_place, max_yaw_diff=args.max_yaw_diff,
                        origin=tuple(args.origin), jpeg_quality=args.jpeg_quality, overwrite=args.overwrite)
    print(f'{s.out}: city {s.city}, {s.places} places, {s.images} images from {s.frames} frames of '
          f'{s.traversals} traversal(s); {s.frames_unused} frames unused, '
          f'{s.candidate_clusters_too_small} candidate clusters too small')
    print('images per traversal: ' + ', '.join(f'{k} {v}' for k, v in s.per_traversal_images.items()))
    return 0


COMMANDS = {
    'train': (add_train_arguments, run_train, 'train or fine-tune a BoQ model (GSV-Cities layout)'),
    'make-train-set': (add_make_train_set_arguments, run_make_train_set,
                       'build a GSV-Cities-layout training set from bags or image folders with poses'),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m training', description='Training of BoQ models.')
    parser.add_argument('-v', '--verbose', action='count', default=0, help='more log output (-vv for debug)')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    for name, (add, run, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(_run=run)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose + 1, 2),
                        format='%(levelname)s %(name)s: %(message)s')
    try:
        return int(args._run(args) or 0)
    except BoqVprError as err:
        print(f'{args.command}: error: {err}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
