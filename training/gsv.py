"""The GSV-Cities layout: per-city dataframes and images, read as places of K images.

Layout (as the official GSV-Cities / OpenVPRLab loaders expect)::

    ROOT/Dataframes/<city>.csv    place_id,year,month,northdeg,city_id,lat,lon,panoid
    ROOT/Images/<city>/<city>_<place_id:07d>_<year:04d>_<month:02d>_<northdeg:03d>_<lat>_<lon>_<panoid>.jpg

``lat`` and ``lon`` in the name are Python's ``str(float)`` of the dataframe values; a file whose
name differs only in how they are written is found by its other fields. Place ids are per city
(below 10**5); across cities they are offset by ``city_index * 10**5`` as in the official code.
Bad rows and missing images raise DatasetError naming the dataframe and the row; places with
fewer than K images are skipped, and counted in the log and the summary.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from boq_vpr.errors import DatasetError
from boq_vpr.inputs.images import load_image

log = logging.getLogger(__name__)

COLUMNS = ('place_id', 'year', 'month', 'northdeg', 'city_id', 'lat', 'lon', 'panoid')
PLACE_ID_LIMIT = 10 ** 5
MAX_LISTED = 5


def image_name(city: str, place_id: int, year: int, month: int, northdeg: int,
               lat: float, lon: float, panoid: str) -> str:
    """Return the GSV-Cities file name of one image."""
    return (f'{city}_{int(place_id):07d}_{int(year):04d}_{int(month):02d}_{int(northdeg):03d}_'
            f'{float(lat)}_{float(lon)}_{panoid}.jpg')


def _name_key(name: str, city: str) -> tuple | None:
    """(place_id, year, month, northdeg, panoid) of a GSV-Cities file name, None if it is not one."""
    if not name.startswith(city + '_') or not name.lower().endswith('.jpg'):
        return None
    parts = name[len(city) + 1:-4].split('_', 6)
    if len(parts) != 7:
        return None
    try:
        return int(parts[0]), int(parts[1]), int(parts[2]), int(parts[3]), parts[6]
    except ValueError:
        return None


@dataclass
class CityStats:
    city: str
    rows: int = 0
    places: int = 0
    images: int = 0
    skipped_places: int = 0
    skipped_images: int = 0
    skipped: bool = False


@dataclass
class GSVSummary:
    root: Path
    images_per_place: int
    cities: list[CityStats] = field(default_factory=list)

    @property
    def places(self) -> int:
        return sum(c.places for c in self.cities)

    @property
    def images(self) -> int:
        return sum(c.images for c in self.cities)

    @property
    def skipped_places(self) -> int:
        return sum(c.skipped_places for c in self.cities)

    @property
    def skipped_cities(self) -> list[str]:
        return [c.city for c in self.cities if c.skipped]

    def to_dict(self) -> dict:
        return {'root': str(self.root), 'images_per_place': self.images_per_place, 'places': self.places,
                'images': self.images, 'skipped_places': self.skipped_places,
                'skipped_cities': self.skipped_cities,
                'cities': {c.city: {'places': c.places, 'images': c.images, 'skipped_places': c.skipped_places,
                                    'skipped_images': c.skipped_images} for c in self.cities}}


def _row_error(csv: Path, row: int, message: str) -> str:
    # row: 0-based data row; the file line is row + 2 (header on line 1)
    return f'{csv} row {row} (line {row + 2}): {message}'


def _as_int(value: str, col: str, csv: Path, row: int, lo: int, hi: int) -> int:
    try:
        f = float(value)
        if not f.is_integer():
            raise ValueError
        v = int(f)
    except ValueError:
        raise DatasetError(_row_error(csv, row, f'column {col!r} is {value!r}, expected an integer')) from None
    if not lo <= v <= hi:
        raise DatasetError(_row_error(csv, row, f'column {col!r} is {v}, expected {lo}..{hi}'))
    return v


def _as_float(value: str, col: str, csv: Path, row: int, limit: float) -> float:
    try:
        v = float(value)
    except ValueError:
        raise DatasetError(_row_error(csv, row, f'column {col!r} is {value!r}, expected a number')) from None
    if not math.isfinite(v) or abs(v) > limit:
        raise DatasetError(_row_error(csv, row, f'column {col!r} is {value!r}, expected |{col}| <= {limit}'))
    return v


def read_city(root: str | Path, city: str) -> list[dict]:
    """Rows of ``ROOT/Dataframes/<city>.csv`` as dicts with typed values and the image ``path``.

    Raises DatasetError naming the file and row for a malformed row or a missing image.
    """
    import pandas as pd
    root = Path(root)
    csv = root / 'Dataframes' / f'{city}.csv'
    if not csv.is_file():
        raise DatasetError(f'{csv}: dataframe not found (GSV-Cities layout: Dataframes/<city>.csv)')
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DatasetError(f'{csv}: not a readable CSV: {err}') from err
    missing_cols = [c for c in COLUMNS if c not in df.columns]
    if missing_cols:
        raise DatasetError(f'{csv}: missing column(s) {", ".join(missing_cols)}; a GSV-Cities dataframe has '
                           f'{", ".join(COLUMNS)} (found: {", ".join(map(str, df.columns))})')
    image_dir = root / 'Images' / city
    if not image_dir.is_dir():
        raise DatasetError(f'{image_dir}: image folder of city {city!r} not found ({csv} lists {len(df)} images)')
    files = {p.name for p in image_dir.iterdir()}
    by_key: dict[tuple, str] = {}
    for name in files:
        key = _name_key(name, city)
        if key is not None:
            by_key.setdefault(key, name)
    rows: list[dict] = []
    missing: list[str] = []
    values = df[list(COLUMNS)].to_numpy(dtype=object)
    for i, (pid, year, month, north, city_id, lat, lon, panoid) in enumerate(values):
        pid = _as_int(pid, 'place_id', csv, i, 0, PLACE_ID_LIMIT - 1)
        year = _as_int(year, 'year', csv, i, 1000, 9999)
        month = _as_int(month, 'month', csv, i, 1, 12)
        north = _as_int(north, 'northdeg', csv, i, 0, 360)
        lat = _as_float(lat, 'lat', csv, i, 90.0)
        lon = _as_float(lon, 'lon', csv, i, 180.0)
        panoid = str(panoid).strip()
        city_id = str(city_id).strip()
        if not panoid:
            raise DatasetError(_row_error(csv, i, "column 'panoid' is empty"))
        if city_id != city:
            raise DatasetError(_row_error(csv, i, f"column 'city_id' is {city_id!r}, "
                                                  f"expected {city!r} (the file name)"))
        name = image_name(city, pid, year, month, north, lat, lon, panoid)
        if name not in files:
            name = by_key.get((pid, year, month, north, panoid), name)
        if name not in files:
            missing.append(_row_error(csv, i, f'image {image_dir / name} not found'))
            continue
        rows.append({'place_id': pid, 'year': year, 'month': month, 'northdeg': north,
                     'lat': lat, 'lon': lon, 'panoid': panoid, 'path': image_dir / name})
    if missing:
        more = f' ... and {len(missing) - MAX_LISTED} more' if len(missing) > MAX_LISTED else ''
        raise DatasetError(f'{len(missing)} of {len(df)} images listed in {csv} are missing: '
                           + '; '.join(missing[:MAX_LISTED]) + more)
    return rows


def list_cities(root: str | Path) -> list[str]:
    """City names of ``ROOT/Dataframes/*.csv``, sorted."""
    folder = Path(root) / 'Dataframes'
    if not folder.is_dir():
        raise DatasetError(f'{folder}: not found; a GSV-Cities dataset has Dataframes/ and Images/')
    cities = sorted(p.stem for p in folder.glob('*.csv'))
    if not cities:
        raise DatasetError(f'{folder}: no <city>.csv dataframes')
    return cities


class GSVCitiesDataset(Dataset):
    """Places of a GSV-Cities-layout dataset.

    Item ``i``: ``(images [K, 3, H, W], labels [K])`` with K = ``images_per_place`` images of place
    ``i`` (a random K of them per call, or the K most recent with ``random_sample=False``).
    """

    def __init__(self, root: str | Path, cities: Sequence[str] | str = 'all', images_per_place: int = 4,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, random_sample: bool = True) -> None:
        self.root = Path(root)
        if images_per_place < 1:
            raise DatasetError(f'images_per_place must be >= 1, got {images_per_place}')
        names = (list_cities(self.root) if cities in ('all', None)
                 else [cities] if isinstance(cities, str) else list(cities))
        self.k = images_per_place
        self.transform = transform
        self.random_sample = random_sample
        self.summary = GSVSummary(self.root, images_per_place)
        self.places: list[list[Path]] = []   # per place, its image paths (most recent first)
        self.labels: list[int] = []          # global place id: city index * 10**5 + place_id
        for ci, city in enumerate(names):
            rows = read_city(self.root, city)
            stats = CityStats(city, rows=len(rows))
            groups: dict[int, list[dict]] = {}
            for r in rows:
                groups.setdefault(r['place_id'], []).append(r)
            for pid in sorted(groups):
                g = sorted(groups[pid], key=lambda r: (r['year'], r['month'], r['lat']), reverse=True)
                if len(g) < images_per_place:
                    stats.skipped_places += 1
                    stats.skipped_images += len(g)
                    continue
                self.places.append([r['path'] for r in g])
                self.labels.append(ci * PLACE_ID_LIMIT + pid)
                stats.places += 1
                stats.images += len(g)
            if stats.skipped_places:
                log.warning('%s: %d of %d places have fewer than %d images and are skipped (%d images)',
                            city, stats.skipped_places, len(groups), images_per_place, stats.skipped_images)
            if stats.places == 0:
                stats.skipped = True
                log.warning('%s: city skipped, none of its %d places has %d images or more',
                            city, len(groups), images_per_place)
            self.summary.cities.append(stats)
        if not self.places:
            raise DatasetError(f'{self.root}: no place with at least {images_per_place} images in '
                               f'{len(names)} cit{"y" if len(names) == 1 else "ies"} ({", ".join(names)})')
        log.info('GSV-Cities set %s: %d places, %d images, %d places skipped', self.root, self.summary.places,
                 self.summary.images, self.summary.skipped_places)

    def __len__(self) -> int:
        return len(self.places)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        paths = self.places[index]
        if self.random_sample:
            order = torch.randperm(len(paths))[:self.k].tolist()
            chosen = [paths[i] for i in order]
        else:
            chosen = paths[:self.k]
        images = []
        for p in chosen:
            t = torch.from_numpy(load_image(p)).permute(2, 0, 1).contiguous()
            images.append(self.transform(t) if self.transform is not None else t)
        return torch.stack(images), torch.full((self.k,), self.labels[index], dtype=torch.long)
