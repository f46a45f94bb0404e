"""The Nordland section that ships with the package.

Real frames for the demo, the tests and the benchmarks on a fresh install.

``boq_vpr/data/nordland_heldout/{summer,winter}/`` holds frames 2400-3575 of the trimmed Nordland
set (64x32 greyscale stored as RGB PNG, 1176 per season), the section that ``resnet18_nordland``
never saw in training, under the file names of the full set (``nordland.frame_name``). Source and
licence: ``boq_vpr/data/nordland_heldout/README.md``.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError
from .nordland import NORDLAND_HELD_OUT, SEASONS, frame_name

HELD_OUT_DIR = Path(__file__).resolve().parents[1] / 'data' / 'nordland_heldout'


def held_out_dir() -> Path:
    """Return the shipped folder (``summer/``, ``winter/``); DatasetError when the install lacks it."""
    missing = [HELD_OUT_DIR / s / frame_name(i) for s in SEASONS for i in (NORDLAND_HELD_OUT[0], NORDLAND_HELD_OUT[-1])
               if not (HELD_OUT_DIR / s / frame_name(i)).is_file()]
    if missing:
        raise DatasetError(f'the shipped Nordland frames are missing ({missing[0]}): the package was installed '
                          'without its data; reinstall it (pip install -e . or colcon build)')
    return HELD_OUT_DIR
