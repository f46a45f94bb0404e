"""The shipped resnet18_nordland model.

Installed with the package, loads strictly, beats the untrained model and the pixel baseline on
Nordland frames it never saw in training, exports to ONNX with the same retrievals, and refuses a
damaged weight file with a clear message.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import boq_vpr
from boq_vpr.commands.bench_recall import aligned_recalls, load_frames
from boq_vpr.encoder import Encoder
from boq_vpr.errors import CheckpointError
from boq_vpr.models import build_model, load_weights, resolve_weights, shipped_weights
from boq_vpr.models import checkpoint
from boq_vpr.evaluation.pixel_baseline import pixel_descriptors

NAME = 'resnet18_nordland'
# Held-out section (training/nordland.py), every 4th frame: 294 winter queries, 294 summer map frames.
SUBSET = range(2400, 3576, 4)
# Required lead in R@1 (absolute) on SUBSET over the untrained model and over the pixel baseline.
# Measured with the shipped weights on SUBSET: trained 0.306, untrained 0.034, pixels 0.187
# (boq_vpr/weights/README.md has the full held-out figures).
MARGIN_UNTRAINED = 0.20
MARGIN_PIXELS = 0.08


def test_shipped_weights_are_package_data_and_load_strictly():
    path = shipped_weights(NAME)
    package = Path(boq_vpr.__file__).resolve().parent
    assert path is not None and path.resolve().parent == package / 'weights'
    assert path.is_file(), f'{path} missing: the package was installed without its weights'
    assert path.stat().st_size <= 20 * 2 ** 20
    assert resolve_weights(NAME, None) == path and resolve_weights(NAME, '') == path
    assert resolve_weights(NAME, 'random') is None and resolve_weights('resnet18_1024', None) is None
    stored = torch.load(path, map_location='cpu', weights_only=True)
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    model = load_weights(build_model(NAME), path)           # strict: raises on any key or shape mismatch
    assert set(model.state_dict()) == set(stored)
    assert all(p.dtype == torch.float32 for p in model.parameters())   # computes in fp32
    enc = Encoder(NAME, backend='torch', device='cpu')        # no weights given: the shipped file
    assert enc.weights == path
    assert Encoder(NAME, weights='random', backend='torch', device='cpu').weights is None


@pytest.fixture(scope='module')
def heldout(heldout_dir):
    return load_frames(heldout_dir / 'summer', SUBSET), load_frames(heldout_dir / 'winter', SUBSET)


def _r1(map_desc, query_desc) -> float:
    idx = np.asarray(SUBSET)
    return aligned_recalls(map_desc, query_desc, 2, ks=(1,), map_index=idx, query_index=idx)[1]


def test_heldout_recall_beats_untrained_and_pixel_baseline(heldout):
    m, q = heldout
    trained = Encoder(NAME, backend='torch', device='cpu', precision='fp32', batch_size=64)
    untrained = Encoder(NAME, weights='random', backend='torch', device='cpu', precision='fp32', batch_size=64)
    r_trained = _r1(trained.encode(m), trained.encode(q))
    r_untrained = _r1(untrained.encode(m), untrained.encode(q))
    r_pixels = _r1(pixel_descriptors(m), pixel_descriptors(q))
    print(f'held-out R@1 on {len(SUBSET)} queries: trained {r_trained:.3f}, untrained {r_untrained:.3f}, '
          f'pixels {r_pixels:.3f}')
    assert r_trained >= r_untrained + MARGIN_UNTRAINED
    assert r_trained >= r_pixels + MARGIN_PIXELS


def test_onnx_export_gives_the_same_top1_as_torch(heldout, tmp_path):
    pytest.importorskip('onnxruntime')
    from boq_vpr.export import export_onnx
    m, q = heldout
    onnx_path = tmp_path / f'{NAME}.onnx'
    export_onnx(boq_vpr.models.get_config(NAME), onnx_path, weights=shipped_weights(NAME))
    torch_enc = Encoder(NAME, backend='torch', device='cpu', precision='fp32', batch_size=64)
    ort_enc = Encoder(NAME, backend='onnxruntime', device='cpu', precision='fp32', batch_size=64,
                      onnx_path=str(onnx_path))
    top1 = []
    for enc in (torch_enc, ort_enc):
        dm, dq = enc.encode(m), enc.encode(q)
        top1.append((dq @ dm.T).argmax(axis=1))
        if enc is torch_enc:
            ref = dq
        else:
            assert float(np.min(np.sum(ref * dq, axis=1))) > 0.9999
    assert np.array_equal(top1[0], top1[1])


@pytest.mark.parametrize('damage', ['truncated', 'garbage', 'missing'])
def test_damaged_shipped_weights_name_the_file_and_how_to_reinstall(tmp_path, monkeypatch, damage):
    fake_dir = tmp_path / 'weights'
    fake_dir.mkdir()
    target = fake_dir / checkpoint.SHIPPED_WEIGHTS[NAME]
    if damage == 'truncated':
        data = shipped_weights(NAME).read_bytes()
        target.write_bytes(data[:len(data) // 3])
    elif damage == 'garbage':
        target.write_bytes(b'\x00not a weight file' * 100)
    monkeypatch.setattr(checkpoint, 'WEIGHTS_DIR', fake_dir)
    assert shipped_weights(NAME) == target
    with pytest.raises(CheckpointError) as info:
        Encoder(NAME, backend='torch', device='cpu')
    message = str(info.value)
    assert str(target) in message and 'reinstall' in message


def test_shipped_weights_with_wrong_tensors_are_refused_with_reinstall_hint(tmp_path, monkeypatch):
    fake_dir = tmp_path / 'weights'
    fake_dir.mkdir()
    shutil.copy(shipped_weights(NAME), fake_dir / checkpoint.SHIPPED_WEIGHTS[NAME])
    state = torch.load(fake_dir / checkpoint.SHIPPED_WEIGHTS[NAME], weights_only=True)
    state.pop('aggregator.fc.weight')
    torch.save(state, fake_dir / checkpoint.SHIPPED_WEIGHTS[NAME])
    monkeypatch.setattr(checkpoint, 'WEIGHTS_DIR', fake_dir)
    with pytest.raises(CheckpointError, match=r'missing keys.*aggregator.fc.weight.*reinstall'):
        Encoder(NAME, backend='torch', device='cpu')
