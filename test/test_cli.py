"""The boq-vpr command line on real images."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from boq_vpr.cli import main
from boq_vpr.inputs.images import list_images
from boq_vpr.models import build_model


@pytest.fixture()
def image_folder(tmp_path, heldout_dir):
    folder = tmp_path / 'images'
    folder.mkdir()
    for p in list_images(heldout_dir / 'summer')[:10]:
        shutil.copy(p, folder / p.name)
    (folder / 'notes.txt').write_text('not an image')
    (folder / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
    return folder


def test_encode_folder(tmp_path, image_folder, capsys):
    out = tmp_path / 'out'
    rc = main(['encode', str(image_folder), '--out', str(out), '--model', 'resnet18_1024',
               '--backend', 'torch', '--device', 'cpu', '--batch-size', '4'])
    assert rc == 0
    desc = np.load(out / 'descriptors.npy')
    assert desc.shape == (10, 1024)
    assert np.allclose(np.linalg.norm(desc, axis=1), 1, atol=1e-5)
    with open(out / 'files.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['file'] for r in rows] == sorted(p.name for p in image_folder.glob('images-*.png'))
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['encoded'] == 10 and summary['skipped'] == 1  # broken.png; notes.txt is not an image name
    assert 'broken.png' in summary['skipped_files'][0]['file']
    assert 'skipped' in capsys.readouterr().out


def test_encode_all_files_counts_non_images(tmp_path, image_folder):
    out = tmp_path / 'out'
    assert main(['encode', str(image_folder), '--out', str(out), '--model', 'resnet18_1024',
                 '--backend', 'torch', '--device', 'cpu', '--all-files']) == 0
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['encoded'] == 10 and summary['skipped'] == 2


def test_encode_empty_folder_is_an_error(tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    assert main(['encode', str(tmp_path / 'empty'), '--out', str(tmp_path / 'o'), '--model', 'resnet18_1024']) == 2
    assert 'no image files' in capsys.readouterr().err


def test_info_with_fitting_and_foreign_weights(tmp_path, capsys):
    path = tmp_path / 'w.pth'
    torch.save(build_model('resnet18_1024', seed=0).state_dict(), path)
    assert main(['info', '--model', 'resnet18_1024', '--weights', str(path), '--json']) == 0
    info = json.loads(capsys.readouterr().out)
    assert info['descriptor_dim'] == 1024 and info['checkpoint']['fits']
    assert info['checkpoint']['keys'] == len(build_model('resnet18_1024').state_dict())
    assert main(['info', '--model', 'resnet18_4096', '--weights', str(path)]) == 1
    assert 'DOES NOT FIT' in capsys.readouterr().out


def test_console_script_runs_as_a_process():
    out = subprocess.run([sys.executable, '-m', 'boq_vpr.cli', 'info', '--model', 'resnet50_16384'],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'descriptor   16384' in out.stdout
    bad = subprocess.run([sys.executable, '-m', 'boq_vpr.cli', 'info', '--model', 'nope'],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and 'resnet50_16384' in bad.stderr


def _import_chain(importtime: str, module: str) -> list[str]:
    """Return the chain of imports that brought ``module`` in, outermost first, from ``python -X importtime``."""
    rows = []
    for line in importtime.splitlines():
        if line.startswith('import time:') and line.count('|') == 2:
            name = line.split('|')[2]
            rows.append((len(name) - len(name.lstrip()), name.strip()))
    at = next((i for i, (_, name) in enumerate(rows) if name == module), None)
    if at is None:
        return []
    chain, depth = [module], rows[at][0]
    for level, name in rows[at + 1:]:      # a module is listed after the ones it imports
        if level < depth:
            chain.insert(0, name)
            depth = level
    return chain


def _help_commands() -> list[list[str]]:
    from boq_vpr.cli import COMMANDS
    from boq_vpr.commands.bench import BENCHES
    return [[]] + [[name] for name in COMMANDS] + [['bench', name] for name in BENCHES]


@pytest.mark.parametrize('command', _help_commands(), ids=lambda c: ' '.join(c) or 'boq-vpr')
def test_help_does_not_import_torch(command):
    out = subprocess.run([sys.executable, '-X', 'importtime', '-m', 'boq_vpr.cli', *command, '--help'],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'usage: boq-vpr' in out.stdout
    chain = _import_chain(out.stderr, 'torch')
    assert not chain, f'boq-vpr {" ".join(command)} --help imports torch: {" -> ".join(chain)}'
