"""``boq-vpr info``: a configuration, and what a weight file holds and whether it fits."""
from __future__ import annotations

import argparse
import json

from ..errors import CheckpointError
from .common import add_model_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser)
    parser.add_argument('--json', action='store_true', help='print JSON instead of text')


def run(args: argparse.Namespace) -> int:
    from ..models import build_model
    from ..models.checkpoint import check_state_dict, read_state_dict, summarize_state_dict
    from ..models.config import get_config
    from ..values import file_sha256
    config = get_config(args.model)
    if args.image_size:
        config = config.with_image_size(*args.image_size)
    model = build_model(config)
    params = sum(p.numel() for p in model.parameters())
    fh, fw = model.feature_shape(*config.image_size)
    info: dict = {
        'model': config.to_dict(), 'descriptor_dim': config.descriptor_dim,
        'parameters': params,
        'parameters_backbone': sum(p.numel() for p in model.backbone.parameters()),
        'parameters_aggregator': sum(p.numel() for p in model.aggregator.parameters()),
        'feature_map': [fh, fw], 'attention_shape': [config.num_queries, fh * fw],
    }
    status = 0
    if args.weights is not None:
        state = read_state_dict(args.weights)
        ck = {'path': str(args.weights), 'sha256': file_sha256(args.weights), **summarize_state_dict(state)}
        try:
            check_state_dict(model, state, source=str(args.weights))
            ck['fits'] = True
        except CheckpointError as err:
            ck['fits'] = False
            ck['error'] = str(err)
            status = 1
        info['checkpoint'] = ck
    if args.json:
        print(json.dumps(info, indent=2))
        return status
    c = config
    print(f'model        {c.name}: {c.backbone} + BoQ (proj {c.proj_channels}, {c.num_queries} queries, '
          f'{c.num_layers} blocks, row_dim {c.row_dim})')
    print(f'input        {c.image_size[0]}x{c.image_size[1]} RGB, ImageNet normalization')
    print(f'descriptor   {c.descriptor_dim} float32, L2-normalized')
    print(f'parameters   {params / 1e6:.2f} M (backbone {info["parameters_backbone"] / 1e6:.2f} M, '
          f'aggregator {info["parameters_aggregator"] / 1e6:.2f} M)')
    print(f'features     {fh}x{fw} local features; attention maps {c.num_queries} x {fh * fw} per block')
    if 'checkpoint' in info:
        ck = info['checkpoint']
        print(f'checkpoint   {ck["path"]}  sha256 {ck["sha256"][:16]}...')
        print(f'             {ck["keys"]} keys, {ck["values"] / 1e6:.2f} M values; ' +
              ', '.join(f'{g}: {v["keys"]} keys' for g, v in ck['groups'].items()))
        print('             fits the model strictly' if ck['fits'] else f'             DOES NOT FIT: {ck["error"]}')
    return status
