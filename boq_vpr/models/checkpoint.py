"""Loading weights: official BoQ ``.pth`` files and checkpoints of our own training.

Only ``torch.load(..., weights_only=True)``: a file that needs unpickling of arbitrary objects is
refused. Keys must match the model exactly; a mismatch lists missing, unexpected and misshapen keys.
"""
from __future__ import annotations

import contextlib
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..errors import CheckpointError
from .config import RANDOM_WEIGHTS

log = logging.getLogger(__name__)

# Weights that ship inside the package (package data of boq_vpr, installed by pip and colcon):
# configuration name -> file in WEIGHTS_DIR. ``--model NAME`` without ``--weights`` loads them.
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / 'weights'
SHIPPED_WEIGHTS: dict[str, str] = {'resnet18_nordland': 'resnet18_nordland.pt'}
REINSTALL_HINT = ('it is a weight file shipped with boq_vpr; reinstall the package '
                  '(pip install --force-reinstall --no-deps boq_vpr, or pip install -e . / colcon build '
                  'in a source checkout, after git checkout -- boq_vpr/weights)')

# Wrappers added by training tools: Lightning module attribute, torch.compile, DataParallel/DDP.
STRIP_PREFIXES = ('model.', '_orig_mod.', 'module.')
MAX_LISTED = 12


def shipped_weights(name: str) -> Path | None:
    """Return the weight file shipped for configuration ``name``, None when none ships."""
    file = SHIPPED_WEIGHTS.get(name)
    return WEIGHTS_DIR / file if file else None


def resolve_weights(name: str, weights: str | Path | None) -> Path | None:
    """Return the weight file to load for configuration ``name``.

    ``weights`` when given; the shipped file when ``weights`` is None or empty; None (random
    weights) for ``'random'`` or when no file ships for ``name``.
    """
    if weights is not None and str(weights) != '':
        return None if str(weights) == RANDOM_WEIGHTS else Path(weights)
    return shipped_weights(name)


def is_shipped(path: str | Path) -> bool:
    return Path(path).resolve().parent == WEIGHTS_DIR and Path(path).name in SHIPPED_WEIGHTS.values()


@contextlib.contextmanager
def _reinstall_hint(path: str | Path):
    """Add to a CheckpointError about a shipped weight file how to reinstall it."""
    try:
        yield
    except CheckpointError as err:
        if is_shipped(path):
            raise CheckpointError(f'{err}; {REINSTALL_HINT}') from err
        raise


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the tensors of a weight file, unwrapped from Lightning (``state_dict``) and prefixes."""
    path = Path(path)
    with _reinstall_hint(path):
        return _read_state_dict(path)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f'weight file not found: {path}')
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f'{path}: refused, it holds Python objects that only a full unpickle could load '
            f'(boq_vpr loads with weights_only=True). Re-save it as a plain state_dict: '
            f'torch.save(model.state_dict(), path). Detail: {str(err).splitlines()[0]}') from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f'{path}: not a readable PyTorch weight file (truncated or corrupt?): {err}') from err
    if isinstance(obj, Mapping) and 'state_dict' in obj and isinstance(obj['state_dict'], Mapping):
        obj = obj['state_dict']
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f'{path}: expected a state_dict (a mapping of names to tensors)')
    return strip_prefixes(obj)


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (``model.``, ``_orig_mod.``, ``module.``) from every key."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for p in STRIP_PREFIXES:
                if key.startswith(p):
                    key, changed = key[len(p):], True
        out[key] = value
    return out


def _listing(title: str, items: list[str]) -> str:
    more = f' ... and {len(items) - MAX_LISTED} more' if len(items) > MAX_LISTED else ''
    return f'{title} ({len(items)}): {", ".join(items[:MAX_LISTED])}{more}'


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = 'checkpoint') -> None:
    """Raise CheckpointError listing missing, unexpected and misshapen keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f'{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}'
                    for k in set(expected) & set(state) if state[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        parts = [f'{source} does not fit the model'
                 f'{" " + repr(model.config.name) if hasattr(model, "config") else ""}']
        if missing:
            parts.append(_listing('missing keys', missing))
        if unexpected:
            parts.append(_listing('unexpected keys', unexpected))
        if shapes:
            parts.append(_listing('wrong shapes (file != model)', shapes))
        parts.append('check --model matches the weights')
        raise CheckpointError('; '.join(parts))


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a weight file strictly into ``model`` (in place) and return it.

    Tensors stored in another floating-point type (the shipped fp16 files) are cast to the model's (fp32).
    """
    state = read_state_dict(path)
    with _reinstall_hint(path):
        check_state_dict(model, state, source=str(path))
    model.load_state_dict(state, strict=True)
    log.info('loaded %d tensors from %s', len(state), path)
    return model


def load_model(config, weights: str | Path | None = None) -> nn.Module:
    """Build ``config`` and load ``weights``.

    Without weights, reproducible random weights (seed ``RANDOM_SEED``) with a warning, so that
    maps and tests agree across processes. ``weights`` is a resolved path (``resolve_weights``
    turns None into the shipped file).
    """
    from .vpr import RANDOM_SEED, build_model
    if weights is None:
        log.warning('no weights given: %s runs with random weights (seed %d); '
                    'descriptors are meaningless for real places', getattr(config, 'name', config), RANDOM_SEED)
        return build_model(config, seed=RANDOM_SEED)
    return load_weights(build_model(config), weights)


def summarize_state_dict(state: Mapping[str, torch.Tensor]) -> dict:
    """Count keys and values, per top-level module."""
    groups: dict[str, dict[str, int]] = {}
    for key, t in state.items():
        g = groups.setdefault(key.split('.')[0], {'keys': 0, 'values': 0})
        g['keys'] += 1
        g['values'] += t.numel()
    return {'keys': len(state), 'values': sum(t.numel() for t in state.values()), 'groups': groups}
