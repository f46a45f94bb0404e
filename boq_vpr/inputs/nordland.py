"""The trimmed Nordland set: its file names, its split and its frames.

Two traversals of one railway (``summer/``, ``winter/``, 3576 frames each) aligned frame by frame:
frame index ``i`` (in file order) is ``images-{(i + 1) * 10:05d}.png`` in both folders, so
``summer/X`` and ``winter/X`` show the same place. ``resnet18_nordland`` is trained on frames before
2400 (``training/nordland.py``); frames 2400-3575 are held out (``NORDLAND_HELD_OUT``) and ship with
the package (``sample_data``). The whole set lies next to the repository (``TRIMMED_DIR``, the
default data of the benchmarks).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

SEASONS = ('summer', 'winter')
# frames per traversal
NORDLAND_FRAMES = 3576
# frames resnet18_nordland never saw in training (training/nordland.py)
NORDLAND_HELD_OUT = range(2400, NORDLAND_FRAMES)
# the whole trimmed set (both traversals), next to the repository
TRIMMED_DIR = Path(__file__).resolve().parents[2].parent / 'shared' / 'data' / 'nordland_trimmed'


def frame_name(index: int) -> str:
    """File name of frame ``index`` (file order of the full set) in the trimmed Nordland folders."""
    return f'images-{(index + 1) * 10:05d}.png'


def load_frames(folder: Path, frames: range) -> list:
    """Load the images (RGB uint8) of frame indices ``frames`` in ``folder``; ConfigError when any is missing."""
    from .images import load_image
    paths = [folder / frame_name(i) for i in frames]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f'{len(missing)} frame(s) missing, first {missing[0]}; check --data and --frames')
    return [load_image(p) for p in paths]
