"""Export: the plain-op inference graph equals the model; ONNX files equal the graph; bad files refused."""
from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from boq_vpr.errors import ExportError
from boq_vpr.export import ExportSpec, InferenceGraph, export_onnx, read_onnx
from boq_vpr.export.onnx_export import check_spec_matches
from boq_vpr.models import build_model, get_config
from boq_vpr.models.config import ModelConfig

VIT_KEYS = ('img_size', 'patch_size', 'embed_dim', 'depth', 'num_heads', 'mlp_ratio', 'init_values',
            'interpolate_offset')


def reference_model(reference_dir, name):
    """Return a model with the reference fixture's weights, its input and expected outputs."""
    ref = torch.load(reference_dir / f'parity_{name}_tiny.pt', weights_only=True)
    c = ref['config']
    size = tuple(ref['input'].shape[-2:])
    if name == 'dinov2':
        vit = {k: c['vit'][k] for k in VIT_KEYS}
        config = ModelConfig('dinov2_tiny', 'dinov2_tiny', size, c['in_channels'], c['proj_channels'],
                             c['num_queries'], c['num_layers'], c['row_dim'], vit)
    else:
        config = get_config('resnet18_1024').with_image_size(*size)
    model = build_model(config).eval()
    model.load_state_dict(ref['state_dict'], strict=True)
    return model, ref


def session(path):
    return ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])


@pytest.mark.parametrize('name', ['resnet18', 'dinov2'])
def test_graph_matches_reference_fixture(reference_dir, name):
    model, ref = reference_model(reference_dir, name)
    x = ref['input']
    with torch.no_grad():
        for size in (tuple(x.shape[-2:]), None):   # position embeddings resolved, or in the graph
            desc, attn = InferenceGraph(model, size, return_attention=True)(x)
            assert (desc - ref['descriptor']).abs().max() < 1e-5
            assert (attn[:, 0] - ref['attn_block0']).abs().max() < 1e-5
            assert (attn[:, 1] - ref['attn_block1']).abs().max() < 1e-5


def test_folded_queries_leave_output_unchanged(reference_dir):
    """cache_queries (PyTorch) and the constant query path (graph) give the uncached model's output."""
    model, ref = reference_model(reference_dir, 'resnet18')
    x = ref['input']
    with torch.no_grad():
        model.aggregator.cache_queries(False)
        plain = model(x)
        model.aggregator.cache_queries()
        assert model.aggregator._cached_queries is not None
        cached = model(x)
        graph = InferenceGraph(model, None)(x)
    assert torch.equal(plain, cached)
    assert (graph - plain).abs().max() < 1e-6
    # the graph holds no query self-attention: its parameters are the model's minus queries/self_attn/norm_q
    names = {n for n, _ in InferenceGraph(model, None).named_parameters()}
    assert not any('queries' in n or 'self_attn' in n or 'norm_q' in n for n in names)


EXPORTS = [('resnet18', False, False), ('resnet18', True, True), ('dinov2', False, True), ('dinov2', True, False)]


@pytest.fixture(scope='module')
def exported(reference_dir, tmp_path_factory):
    """ONNX exports of both reference models: fixed/dynamic size, with/without attention output."""
    out = {}
    for name, dynamic_size, attention in EXPORTS:
        model, ref = reference_model(reference_dir, name)
        path = tmp_path_factory.mktemp('onnx') / f'{name}-{dynamic_size}-{attention}.onnx'
        spec = export_onnx(model, path, dynamic_size=dynamic_size, attention=attention)
        out[name, dynamic_size, attention] = (path, spec, model, ref)
    return out


@pytest.mark.parametrize('key', EXPORTS)
def test_onnx_matches_reference(exported, key):
    path, spec, model, ref = exported[key]
    _, dynamic_size, attention = key
    proto, read = read_onnx(path)
    assert read == spec and read.attention == attention and (read.image_size is None) == dynamic_size
    assert [i.name for i in proto.graph.input] == ['images']
    assert [o.name for o in proto.graph.output] == (['descriptor', 'attention'] if attention else ['descriptor'])
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    assert ops['Softmax'] >= 2 and ops['MatMul'] > 0
    assert not {'Attention', 'MultiHeadAttention', 'BatchNormalization'} & set(ops)
    sess = session(path)
    out = sess.run(None, {'images': ref['input'].numpy()})
    assert np.abs(out[0] - ref['descriptor'].numpy()).max() < 1e-5
    if attention:
        assert np.abs(out[1][:, 1] - ref['attn_block1'].numpy()).max() < 1e-5
    # dynamic batch: three images
    x3 = torch.cat([ref['input'], ref['input'][:1]])
    assert sess.run(['descriptor'], {'images': x3.numpy()})[0].shape == (3, ref['descriptor'].shape[1])
    if dynamic_size:  # other input sizes (DINOv2: position embeddings interpolated in the graph)
        x = torch.randn(1, 3, 224, 266, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = model(x).numpy()
        assert np.abs(sess.run(['descriptor'], {'images': x.numpy()})[0] - expected).max() < 1e-5


def test_metadata_and_mismatch_errors(exported):
    path, spec, model, _ = exported['resnet18', False, False]
    config = model.config
    assert spec.image_size == (160, 224) and spec.weights.startswith('state-') and spec.dynamic_batch
    _, read = read_onnx(path)
    assert ExportSpec.from_metadata(read.to_metadata()) == read
    check_spec_matches(read, config, None, str(path))
    with pytest.raises(ExportError, match='fixed to input 160x224'):
        check_spec_matches(read, config.with_image_size(96, 96), None, str(path))
    with pytest.raises(ExportError, match='not resnet50_16384'):
        check_spec_matches(read, get_config('resnet50_16384'), None, str(path))


def test_corrupt_and_foreign_onnx_are_refused(tmp_path):
    bad = tmp_path / 'bad.onnx'
    bad.write_bytes(b'\x08\x07garbage' * 10)
    with pytest.raises(ExportError, match='bad.onnx'):
        read_onnx(bad)
    with pytest.raises(ExportError, match='not found'):
        read_onnx(tmp_path / 'missing.onnx')
    # a valid ONNX model without our metadata
    node = onnx.helper.make_node('Relu', ['x'], ['y'])
    graph = onnx.helper.make_graph([node], 'g', [onnx.helper.make_tensor_value_info('x', onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info('y', onnx.TensorProto.FLOAT, [1])])
    foreign = tmp_path / 'foreign.onnx'
    onnx.save(onnx.helper.make_model(graph), foreign)
    with pytest.raises(ExportError, match='boq-vpr export'):
        read_onnx(foreign)


def test_export_cli(tmp_path, capsys):
    from boq_vpr.cli import main
    out = tmp_path / 'r18.onnx'
    assert main(['export', '--model', 'resnet18_1024', '--image-size', '64', '--out', str(out), '--attention']) == 0
    _, spec = read_onnx(out)
    assert spec.attention and spec.image_size == (64, 64)
    assert (tmp_path / 'r18.json').is_file()
    assert 'exported resnet18_1024' in capsys.readouterr().out
    assert main(['export', '--model', 'resnet18_1024', '--out', str(out), '--precision', 'int8']) == 2


def test_mixed_fp16_export(reference_dir, tmp_path):
    """FP16 weights and math, LayerNorm/softmax/output in FP32; float32 input and output."""
    from boq_vpr.export.graph import to_mixed_precision
    model, ref = reference_model(reference_dir, 'resnet18')
    with torch.no_grad():
        torch_fp16 = to_mixed_precision(InferenceGraph(model, None))(ref['input'])
    assert torch.nn.functional.cosine_similarity(torch_fp16, ref['descriptor']).min() >= 0.999
    path = tmp_path / 'fp16.onnx'
    spec = export_onnx(model, path, precision='fp16')
    proto, read = read_onnx(path)
    assert spec.precision == read.precision == 'fp16'
    float_type = onnx.TensorProto.FLOAT
    assert proto.graph.input[0].type.tensor_type.elem_type == float_type
    assert proto.graph.output[0].type.tensor_type.elem_type == float_type
    types = collections.Counter(t.data_type for t in proto.graph.initializer if len(t.dims) >= 2)
    assert set(types) == {onnx.TensorProto.FLOAT16}, 'conv and matmul weights must be FP16'
    inits = {t.name: t.data_type for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == 'LayerNormalization':
            assert all(inits.get(i, float_type) == float_type for i in node.input[1:])
    out = session(path).run(['descriptor'], {'images': ref['input'].numpy()})[0]
    cos = (out * ref['descriptor'].numpy()).sum(1) / np.linalg.norm(out, axis=1)
    assert cos.min() >= 0.999
    with pytest.raises(ExportError, match='valid: fp32, fp16'):
        export_onnx(model, tmp_path / 'x.onnx', precision='int8')
