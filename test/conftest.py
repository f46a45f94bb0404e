"""Shared fixtures: paths of the shared reference fixtures and real images.

``heldout_dir``: Nordland frames 2400-3575 (summer, winter), shipped with the package, in every
clone. ``nordland_dir``: the whole trimmed Nordland set (3576 frames per season) and
``reference_dir``: the official model's fixtures, both in ``../shared`` beside the repository
(``BOQ_VPR_SHARED`` points elsewhere); tests that need them skip where they are absent.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get('BOQ_VPR_SHARED', ROOT.parent / 'shared'))
REFERENCE = SHARED / 'reference'
NORDLAND = SHARED / 'data' / 'nordland_trimmed'


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f'{path} is absent (shared fixtures and data are not in a fresh clone)')
    return path


@pytest.fixture(scope='session')
def reference_dir() -> Path:
    return _need(REFERENCE)


@pytest.fixture(scope='session')
def nordland_dir() -> Path:
    return _need(NORDLAND)


@pytest.fixture(scope='session')
def heldout_dir() -> Path:
    """Return the shipped Nordland section (``boq_vpr/data/nordland_heldout``).

    It holds summer/ and winter/, frames 2400-3575 under their names in the whole set. Missing is an
    error, not a skip: it ships.
    """
    from boq_vpr.inputs.sample_data import held_out_dir
    return held_out_dir()


@pytest.fixture(autouse=True, scope='session')
def _torch_threads():
    import torch
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def load_script(name: str):
    """Import a script of scripts/ (not a package module) as a module, for its tests."""
    import importlib.util
    import sys
    spec = importlib.util.spec_from_file_location(name, ROOT / 'scripts' / f'{name}.py')
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module   # dataclasses of the script look their module up by name
    spec.loader.exec_module(module)
    return module
