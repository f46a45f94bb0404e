"""Every operator and tensor type of each exported graph is one the TensorRT ONNX parser supports.

The graphs' structure depends on the backbone family (ResNet, DINOv2) and the export options
(fixed or dynamic size, attention output), not on the width or depth of a configuration, so small
configurations of both families cover every named configuration's operators; the full-size
``resnet50_16384`` graph is checked too.
"""
from __future__ import annotations

import onnx
import pytest

from boq_vpr.backends.trt_supported_ops import (SUPPORTED_OPS, TENSORRT_ONNX_PARSER_VERSION, graph_report,
                                                unsupported_ops)
from boq_vpr.export import export_onnx
from boq_vpr.models import MODEL_CONFIGS, get_config
from boq_vpr.models.config import ModelConfig

TINY_DINO = ModelConfig('dinov2_tiny', 'dinov2_tiny', (56, 70), 96, 64, 8, 2, 4,
                        {'embed_dim': 96, 'depth': 2, 'num_heads': 2, 'img_size': 518, 'patch_size': 14,
                         'mlp_ratio': 4.0, 'init_values': 1.0, 'interpolate_offset': 0.1})
CASES = [
    (get_config('resnet18_1024').with_image_size(64, 64), False, False),
    (get_config('resnet18_1024').with_image_size(64, 64), 'fp16', False),
    (get_config('resnet18_1024').with_image_size(64, 64), True, True),
    (TINY_DINO, False, True),
    (TINY_DINO, True, False),
    (get_config('resnet50_16384'), False, False),
]


def export_options(dynamic_size, attention) -> dict:
    """CASES hold dynamic_size=True/False, or 'fp16' for the fixed-size mixed FP16 graph."""
    if dynamic_size == 'fp16':
        return {'dynamic_size': False, 'attention': attention, 'precision': 'fp16'}
    return {'dynamic_size': dynamic_size, 'attention': attention}


def test_list_is_named_and_plausible():
    assert '10.' in TENSORRT_ONNX_PARSER_VERSION
    for op in ('Conv', 'MatMul', 'Softmax', 'LayerNormalization', 'Resize', 'Range', 'Where'):
        assert op in SUPPORTED_OPS
    for op in ('ConvInteger', 'MatMulInteger', 'QLinearConv', 'SequenceAt', 'StringNormalizer'):
        assert op not in SUPPORTED_OPS
    assert unsupported_ops(['Conv', 'QLinearMatMul']) == ['QLinearMatMul']


def test_every_named_configuration_is_covered():
    families = {'resnet' if not c.is_vit else 'dinov2' for c in MODEL_CONFIGS.values()}
    assert families == {'resnet', 'dinov2'}
    assert {'resnet' if not c.is_vit else 'dinov2' for c, _, _ in CASES} == families


@pytest.mark.parametrize('config,dynamic_size,attention', CASES,
                         ids=[f'{c.name}-{"fp16" if d == "fp16" else "dyn" if d else "fixed"}{"-attn" if a else ""}'
                              for c, d, a in CASES])
def test_exported_graph_uses_only_tensorrt_operators(tmp_path, config, dynamic_size, attention):
    path = tmp_path / 'model.onnx'
    export_onnx(config, path, **export_options(dynamic_size, attention))
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    report = graph_report(proto)
    assert report['ops'], 'graph has no operators'
    assert report['unsupported_ops'] == [], f'not in {TENSORRT_ONNX_PARSER_VERSION}: {report["unsupported_ops"]}'
    assert report['unsupported_types'] == [], f'tensor types TensorRT lacks: {report["unsupported_types"]}'
    assert 'FLOAT' in report['element_types']
    # restrictions from the table that matter here
    initializers = {t.name for t in proto.graph.initializer} | {
        o for n in proto.graph.node if n.op_type == 'Constant' for o in n.output}
    for node in proto.graph.node:
        if node.op_type == 'Clip':
            assert all(i == '' or i in initializers for i in node.input[1:]), 'Clip bounds must be constants'
        if node.op_type == 'Resize':
            mode = {a.name: a.s for a in node.attribute}.get('mode', b'nearest')
            assert mode in (b'nearest', b'linear', b'cubic')
