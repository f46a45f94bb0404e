"""The Nordland split that ``resnet18_nordland`` is trained and measured on.

Frames are indexed in file order (``images-NNNNN.png`` is index NNNNN/10 - 1) and are taken as
10 m apart. The route is split by section so that test places are never seen in training:

- train: frames 0-2199 of both seasons (``make-train-set``: places of 3 neighbouring frames
  x 2 seasons, one place every 4 frames, so neighbouring places are at least 2 frames apart);
- validation (checkpoint choice): frames 2200-2349, summer database and winter queries;
- gap: frames 2350-2399, unused;
- test (held out, never used while training): frames 2400-3575.

``python -m training.nordland --data ../shared/data/nordland_trimmed --out runs/nordland_data``
writes ``gsv/`` (GSV-Cities layout) and ``val/`` (Pittsburgh layout, positives within 25 m).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from boq_vpr.inputs.nordland import NORDLAND_HELD_OUT, SEASONS, frame_name

from .make_train_set import Traversal, build_train_set

FRAME_SPACING_M = 10.0
TRAIN_FRAMES = range(0, 2200)
VAL_FRAMES = range(2200, 2350)
TEST_FRAMES = NORDLAND_HELD_OUT
PLACE_RADIUS_M = 15.0          # frames c-1, c, c+1
PLACE_SPACING_M = 40.0         # one place every 4 frames


def prepare(nordland: Path, out: Path, overwrite: bool = False) -> dict:
    """Write the training set and the validation set of the split; return a summary."""
    nordland, out = Path(nordland), Path(out)
    missing = [str(nordland / s / frame_name(i)) for s in SEASONS for i in (TRAIN_FRAMES[0], TEST_FRAMES[-1])
               if not (nordland / s / frame_name(i)).is_file()]
    if missing:
        raise FileNotFoundError(f'not the trimmed Nordland folders (summer/, winter/): missing {missing[0]}')
    if out.exists() and overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    for season in SEASONS:
        lines = ['image,x,y'] + [f'{frame_name(i)},{FRAME_SPACING_M * i},0' for i in TRAIN_FRAMES]
        (out / f'{season}_train.csv').write_text('\n'.join(lines) + '\n')
    built = build_train_set([Traversal(nordland / s, out / f'{s}_train.csv', name=s) for s in SEASONS],
                            out / 'gsv', city='Nordland', radius=PLACE_RADIUS_M, min_spacing=PLACE_SPACING_M,
                            images_per_place=4, max_images_per_place=6, overwrite=True)
    val = out / 'val'
    for sub, season in (('database', 'summer'), ('queries', 'winter')):
        folder = val / sub
        folder.mkdir(parents=True, exist_ok=True)
        for i in VAL_FRAMES:
            shutil.copy(nordland / season / frame_name(i),
                        folder / f'@{FRAME_SPACING_M * i:09.2f}@0.00@{season}{i}@.png')
    summary = {'train_frames': [TRAIN_FRAMES[0], TRAIN_FRAMES[-1]], 'val_frames': [VAL_FRAMES[0], VAL_FRAMES[-1]],
               'test_frames': [TEST_FRAMES[0], TEST_FRAMES[-1]], 'places': built.places, 'images': built.images,
               'per_season_images': built.per_traversal_images, 'place_radius_m': PLACE_RADIUS_M,
               'place_spacing_m': PLACE_SPACING_M}
    (out / 'split.json').write_text(json.dumps(summary, indent=2) + '\n')
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog='python -m training.nordland', description=__doc__.split('\n\n')[0])
    p.add_argument('--data', type=Path, required=True, help='the nordland_trimmed folder (summer/, winter/)')
    p.add_argument('--out', type=Path, required=True, help='output folder (gsv/, val/, split.json)')
    p.add_argument('--overwrite', action='store_true', help='replace an existing output folder')
    a = p.parse_args(argv)
    print(json.dumps(prepare(a.data, a.out, a.overwrite), indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
