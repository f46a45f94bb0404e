"""Model architecture, official key compatibility, parity with the official code, weight loading."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from boq_vpr.errors import CheckpointError, ConfigError, ImageError
from boq_vpr.models import MODEL_CONFIGS, ModelConfig, build_model, get_config, load_weights, read_state_dict
from boq_vpr.models.checkpoint import check_state_dict

PARITY_TOL = 1e-5


@pytest.mark.parametrize('name', ['resnet50_16384', 'dinov2_12288'])
def test_state_dict_matches_official_manifest(reference_dir, name):
    manifest = json.loads((reference_dir / f'{name}_state_dict_shapes.json').read_text())
    model = build_model(name)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(ours) == sorted(manifest), 'state_dict keys differ from the official model'
    assert ours == manifest
    assert model.descriptor_dim == int(name.split('_')[1])


def test_official_resnet50_layout_loads_strictly_from_file(tmp_path):
    """A file with the official layout (plain state_dict, backbone./aggregator.) loads strictly."""
    src = build_model('resnet50_16384', seed=1)
    path = tmp_path / 'resnet50_16384.pth'
    torch.save(src.state_dict(), path)
    dst = load_weights(build_model('resnet50_16384'), path)
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k


def _fixture_model(fixture: dict) -> torch.nn.Module:
    c = fixture['config']
    h, w = fixture['input'].shape[-2:]
    if c['backbone'] == 'dinov2':
        v = c['vit']
        cfg = ModelConfig('parity_dinov2', 'dinov2_custom', (h, w), c['in_channels'], c['proj_channels'],
                          c['num_queries'], c['num_layers'], c['row_dim'],
                          vit={'embed_dim': v['embed_dim'], 'depth': v['depth'], 'num_heads': v['num_heads'],
                               'img_size': v['img_size'], 'mlp_ratio': v['mlp_ratio'],
                               'init_values': v['init_values'], 'interpolate_offset': v['interpolate_offset']})
    else:
        cfg = ModelConfig('parity_resnet', c['backbone'], (h, w), c['in_channels'], c['proj_channels'],
                          c['num_queries'], c['num_layers'], c['row_dim'])
    model = build_model(cfg)
    check_state_dict(model, fixture['state_dict'], source='fixture')
    model.load_state_dict(fixture['state_dict'], strict=True)
    return model.eval()


@pytest.mark.parametrize('fixture_name', ['parity_resnet18_tiny.pt', 'parity_dinov2_tiny.pt'])
def test_parity_with_official_code(reference_dir, fixture_name):
    fx = torch.load(reference_dir / fixture_name, weights_only=True)
    model = _fixture_model(fx)
    with torch.no_grad():
        desc, attns = model(fx['input'], return_attention=True)
    assert desc.shape == fx['descriptor'].shape
    assert (desc - fx['descriptor']).abs().max().item() < PARITY_TOL
    assert len(attns) == 2
    for i, attn in enumerate(attns):
        ref = fx[f'attn_block{i}']
        assert attn.shape == ref.shape
        assert (attn - ref).abs().max().item() < PARITY_TOL
    # Inference path: no attention weights, queries' self-attention precomputed.
    model.aggregator.cache_queries()
    with torch.no_grad():
        fast = model(fx['input'])
    assert (fast - fx['descriptor']).abs().max().item() < PARITY_TOL
    # The attention grid matches feature_shape().
    fh, fw = model.feature_shape(*fx['input'].shape[-2:])
    assert attns[0].shape[-1] == fh * fw


def test_forward_unit_norm_and_nonsquare_dinov2():
    cfg = ModelConfig('tiny_vit', 'dinov2_custom', (42, 70), 32, 64, 4, 2, 4,
                      vit={'embed_dim': 32, 'depth': 1, 'num_heads': 2, 'img_size': 56})
    model = build_model(cfg, seed=0).eval()
    with torch.no_grad():
        out, attns = model(torch.randn(3, 3, 42, 70), return_attention=True)
    assert out.shape == (3, 256)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-6)
    assert attns[0].shape == (3, 4, 3 * 5)


def test_dinov2_input_sides_must_be_multiples_of_14():
    cfg = ModelConfig('tiny_vit', 'dinov2_custom', (42, 42), 32, 64, 4, 1, 4,
                      vit={'embed_dim': 32, 'depth': 1, 'num_heads': 2, 'img_size': 56})
    model = build_model(cfg).eval()
    with pytest.raises(ImageError, match='multiples of 14'):
        model(torch.randn(1, 3, 40, 42))
    with pytest.raises(ConfigError, match='multiples of 14'):
        get_config('dinov2_12288').with_image_size(320, 320).validate()


def test_registry_names():
    assert {'resnet50_16384', 'dinov2_12288'} <= set(MODEL_CONFIGS)
    with pytest.raises(ValueError) as err:
        get_config('resnet51')
    for name in MODEL_CONFIGS:
        assert name in str(err.value)
    for cfg in MODEL_CONFIGS.values():
        cfg.validate()


def test_seeded_random_weights_are_reproducible():
    a = build_model('resnet18_1024', seed=0).state_dict()
    b = build_model('resnet18_1024', seed=0).state_dict()
    c = build_model('resnet18_1024', seed=1).state_dict()
    key = 'aggregator.boqs.0.queries'
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])


# --- checkpoints -------------------------------------------------------------------------------

@pytest.fixture()
def tiny_state():
    return build_model('resnet18_1024', seed=3).state_dict()


def test_lightning_and_compiled_checkpoints_load(tmp_path, tiny_state):
    lightning = {'epoch': 3, 'global_step': 10,
                 'state_dict': {f'model._orig_mod.{k}': v for k, v in tiny_state.items()}}
    path = tmp_path / 'last.ckpt'
    torch.save(lightning, path)
    model = load_weights(build_model('resnet18_1024'), path)
    assert torch.equal(model.state_dict()['aggregator.fc.weight'], tiny_state['aggregator.fc.weight'])


def test_missing_and_unexpected_keys_are_listed(tmp_path, tiny_state):
    state = dict(tiny_state)
    del state['aggregator.fc.bias']
    state['aggregator.extra.weight'] = torch.zeros(1)
    path = tmp_path / 'bad.pth'
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_weights(build_model('resnet18_1024'), path)
    msg = str(err.value)
    assert 'missing keys (1): aggregator.fc.bias' in msg
    assert 'unexpected keys (1): aggregator.extra.weight' in msg
    assert str(path) in msg


def test_wrong_shapes_are_listed(tmp_path):
    path = tmp_path / 'other.pth'
    torch.save(build_model('resnet18_4096').state_dict(), path)
    with pytest.raises(CheckpointError, match=r'wrong shapes .*aggregator\.boqs\.0\.queries'):
        load_weights(build_model('resnet18_1024'), path)


def test_truncated_file_is_refused_with_its_name(tmp_path, tiny_state):
    path = tmp_path / 'trunc.pth'
    torch.save(tiny_state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match='trunc.pth.*truncated or corrupt'):
        read_state_dict(path)


class Payload:
    """An object whose unpickling would run code."""

    def __reduce__(self):
        return (print, ('this must never run',))


def test_pickle_payload_is_refused(tmp_path, capsys):
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'x': torch.zeros(1)}, 'payload': Payload()}, path)
    with pytest.raises(CheckpointError, match='weights_only=True'):
        read_state_dict(path)
    assert 'this must never run' not in capsys.readouterr().out
    path2 = tmp_path / 'plain.pkl'
    path2.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError):
        read_state_dict(path2)
    assert 'this must never run' not in capsys.readouterr().out


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match='not found'):
        read_state_dict(tmp_path / 'nope.pth')
