"""``boq-vpr export``: checkpoint -> ONNX (-> INT8 ONNX for the CPU, -> TensorRT engine on a GPU).

Examples::

    boq-vpr export --model resnet50_16384 --weights resnet50_16384.pth --out deploy/resnet50.onnx
    boq-vpr export ... --precision int8 --calibration images/          # + deploy/resnet50-int8.onnx
    boq-vpr export ... --engine deploy/resnet50-fp16.engine --precision fp16 --max-batch 8   # GPU
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..errors import ConfigError
from .common import add_model_args

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser)
    parser.add_argument('--out', type=Path, required=True, help='ONNX file to write')
    parser.add_argument('--dynamic-size', action='store_true',
                        help='leave height and width free (DINOv2: multiples of 14); default: fixed to --image-size')
    parser.add_argument('--static-batch', action='store_true', help='batch fixed to 1 (default: dynamic batch)')
    parser.add_argument('--attention', action='store_true',
                        help='second output "attention" [N, blocks, queries, h*w] (cross-attention maps)')
    parser.add_argument('--opset', type=int, default=18, help='ONNX opset (default: 18)')
    parser.add_argument('--precision', default='fp32', choices=('fp32', 'fp16', 'int8'),
                        help='with --engine: engine precision (built from the FP32 ONNX). Without: fp16 writes '
                             'the mixed FP16 graph (FP16 math, LayerNorm/softmax FP32) for GPU runtimes; int8 '
                             'also writes a calibrated INT8 ONNX (<out>-int8.onnx) for onnxruntime/openvino '
                             '(default: fp32)')
    parser.add_argument('--calibration', type=Path, default=None,
                        help='folder of images from the deployment camera for INT8 calibration')
    parser.add_argument('--engine', type=Path, default=None,
                        help='also build a TensorRT engine here (needs TensorRT and a CUDA GPU)')
    parser.add_argument('--max-batch', type=int, default=8, help='engine: largest batch (default: 8)')
    parser.add_argument('--opt-batch', type=int, default=1, help='engine: batch to tune for (default: 1)')
    parser.add_argument('--device', default='cuda', help='engine: CUDA device (default: cuda)')


def run(args: argparse.Namespace) -> int:
    from ..export import export_onnx, read_onnx
    from ..models.config import get_config
    config = get_config(args.model)
    if args.image_size:
        config = config.with_image_size(*args.image_size)
    if args.precision == 'int8' and args.calibration is None:
        raise ConfigError('--precision int8 needs --calibration FOLDER with images from the deployment camera')
    if args.engine is not None and (args.dynamic_size or args.attention):
        log.warning('the engine is built for %dx%d and returns only the descriptor', *config.image_size)
    fp16_graph = args.precision == 'fp16' and (args.engine is None or _strongly_typed_tensorrt())
    spec = export_onnx(config, args.out, weights=args.weights, dynamic_size=args.dynamic_size,
                       dynamic_batch=not args.static_batch, attention=args.attention, opset=args.opset,
                       precision='fp16' if fp16_graph else 'fp32')
    proto, _ = read_onnx(args.out)
    summary = {'onnx': str(args.out), 'spec': spec.to_metadata(), 'nodes': len(proto.graph.node),
               'inputs': [i.name for i in proto.graph.input], 'outputs': [o.name for o in proto.graph.output],
               'megabytes': round(args.out.stat().st_size / 2**20, 1)}
    print(f'exported {config.name} -> {args.out} ({summary["megabytes"]} MiB, {summary["nodes"]} nodes, '
          f'inputs {summary["inputs"]}, outputs {summary["outputs"]})')
    if args.precision == 'int8' and args.engine is None:
        from ..backends.onnx_files import int8_onnx
        cached = int8_onnx(config, args.weights, args.out, args.calibration)
        target = args.out.with_name(args.out.stem + '-int8.onnx')
        target.write_bytes(cached.read_bytes())
        summary['int8_onnx'] = str(target)
        print(f'INT8 (QDQ, calibrated on {args.calibration}) -> {target}')
    if args.engine is not None:
        from ..backends.tensorrt_backend import TensorRTBackend
        backend = TensorRTBackend(config, args.weights, device=args.device, precision=args.precision,
                                  onnx_path=args.out, engine_path=args.engine, force_rebuild=True,
                                  max_batch=args.max_batch, opt_batch=args.opt_batch, calibration=args.calibration)
        summary['engine'] = backend.describe()
        print(f'TensorRT {args.precision} engine -> {args.engine} (batch 1..{backend.max_batch}, '
              f'{backend.describe()["gpu"]})')
    args.out.with_suffix('.json').write_text(json.dumps(summary, indent=2) + '\n')
    return 0


def _strongly_typed_tensorrt() -> bool:
    """TensorRT 11 takes precisions from the graph: its fp16 engines are built from the FP16 export."""
    from ..backends.tensorrt_backend import import_tensorrt, weak_typing
    return not weak_typing(import_tensorrt())
