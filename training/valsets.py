"""Validation sets in the standard VPR layouts -> database/query image lists + positives.

``LAYOUTS`` maps a layout name to a loader ``(ValSetConfig) -> ValSet``:

- ``pitts``: ``ROOT/database`` and ``ROOT/queries`` (or ``query``) holding images named
  ``@UTM_east@UTM_north@...`` (Pittsburgh, Tokyo 24/7 and the VPR benchmark's format);
  positives are database images within ``radius_m`` (25 m) of the query.
- ``npy``: the ground-truth files distributed with the official GSV-Cities / OpenVPRLab code:
  ``<prefix>_dbImages.npy`` + ``<prefix>_qImages.npy`` + ``<prefix>_gt*.npy`` (object array of
  positive database indices per query; ``<prefix>_qIdx.npy`` + ``<prefix>_pIdx.npy`` for
  MSLS-val), or ``<prefix>_ref_image_names.npy`` + ``<prefix>_query_image_names.npy`` +
  ``<prefix>_ground_truth_25m.npy``. Image paths are relative to ``root``.
- ``msls``: the Mapillary SLS folders ``ROOT/[train_val/]<city>/{database,query}/`` with
  ``postprocessed.csv`` (key, easting, northing), optional ``raw.csv`` (panoramas are excluded) and
  ``images/<key>.jpg``; cities ``cph`` and ``sf`` (MSLS-val); positives within 25 m, queries
  without a positive are left out, as in the official MSLS evaluation.

Recall@k of every layout goes through ``boq_vpr.evaluation.metrics.recall_at_k`` (``training.metrics.recalls``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from boq_vpr.errors import ConfigError, DatasetError, ImageError
from boq_vpr.inputs.images import list_images, load_image
from boq_vpr.preprocessing import Preprocessor

from .config import ValSetConfig
from .metrics import DEFAULT_K, recalls as recalls_of_predictions, retrieve

log = logging.getLogger(__name__)

MSLS_VAL_CITIES = ('cph', 'sf')


@dataclass
class ValSet:
    """Database images, query images and, per query, the indices of its database positives."""

    name: str
    layout: str
    database: list[Path]
    queries: list[Path]
    positives: list[np.ndarray]

    def __post_init__(self) -> None:
        if len(self.positives) != len(self.queries):
            raise DatasetError(f'{self.name}: {len(self.positives)} ground-truth rows for {len(self.queries)} queries')
        if not self.database or not self.queries:
            raise DatasetError(f'{self.name}: empty ({len(self.database)} database, {len(self.queries)} query images)')

    @property
    def images(self) -> list[Path]:
        """Database images first, then queries (the order of the descriptors ``recalls`` expects)."""
        return self.database + self.queries

    def recalls(self, descriptors: np.ndarray, k_values: Sequence[int] = DEFAULT_K) -> dict[int, float]:
        """Recall@k from descriptors ``[len(images), D]`` in ``images`` order."""
        n_db = len(self.database)
        assert descriptors.ndim == 2 and descriptors.shape[0] == n_db + len(self.queries), descriptors.shape
        pred = retrieve(descriptors[:n_db], descriptors[n_db:], max(k_values))
        return recalls_of_predictions(pred, self.positives, k_values)

    def describe(self) -> str:
        with_pos = sum(1 for p in self.positives if len(p))
        return (f'{self.name} ({self.layout}): {len(self.database)} database, {len(self.queries)} queries '
                f'({with_pos} with positives)')


class ImageListDataset(Dataset):
    """Images of a list through the inference preprocessing -> ``(tensor [3, H, W], index)``."""

    def __init__(self, paths: Sequence[Path], preprocessor: Preprocessor) -> None:
        self.paths = list(paths)
        self.preprocessor = preprocessor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = load_image(self.paths[index])
        return self.preprocessor.to_tensor(image)[0], index


def positives_within(database_xy: np.ndarray, query_xy: np.ndarray, radius: float) -> list[np.ndarray]:
    """Per query, sorted indices of the database points within ``radius`` (same units)."""
    from scipy.spatial import cKDTree
    assert database_xy.ndim == 2 and query_xy.ndim == 2 and database_xy.shape[1] == query_xy.shape[1]
    tree = cKDTree(database_xy)
    return [np.array(sorted(ix), dtype=np.int64) for ix in tree.query_ball_point(query_xy, r=radius)]


# ------------------------------------------------------------------ pitts: @east@north@ names

def utm_from_name(path: Path) -> tuple[float, float]:
    """``@0584289.99@4477356.72@...`` -> (east, north); DatasetError naming the file otherwise."""
    parts = path.name.split('@')
    try:
        return float(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        raise DatasetError(f'{path}: name does not start with @UTM_east@UTM_north@ '
                           '(the Pittsburgh-style layout)') from None


def load_pitts(cfg: ValSetConfig) -> ValSet:
    root = Path(cfg.root)
    db_dir = root / 'database'
    q_dir = next((root / n for n in ('queries', 'query') if (root / n).is_dir()), None)
    if not db_dir.is_dir() or q_dir is None:
        raise DatasetError(f'{root}: expected sub-folders database/ and queries/ (Pittsburgh-style layout)')
    try:
        db, qs = list_images(db_dir, recursive=True), list_images(q_dir, recursive=True)
    except ImageError as err:
        raise DatasetError(str(err)) from err
    db_xy = np.array([utm_from_name(p) for p in db], dtype=np.float64).reshape(-1, 2)
    q_xy = np.array([utm_from_name(p) for p in qs], dtype=np.float64).reshape(-1, 2)
    if not len(db) or not len(qs):
        raise DatasetError(f'{root}: no images in database/ ({len(db)}) or queries/ ({len(qs)})')
    positives = positives_within(db_xy, q_xy, cfg.radius_m)
    return _drop_queries_without_positives(ValSet(cfg.name or root.name, 'pitts', db, qs, positives), cfg.radius_m)


def _drop_queries_without_positives(vs: ValSet, radius: float) -> ValSet:
    keep = [i for i, p in enumerate(vs.positives) if len(p)]
    if len(keep) < len(vs.queries):
        log.warning('%s: %d of %d queries have no database image within %.1f m; left out',
                    vs.name, len(vs.queries) - len(keep), len(vs.queries), radius)
    if not keep:
        raise DatasetError(f'{vs.name}: no query has a database image within {radius} m')
    return ValSet(vs.name, vs.layout, vs.database, [vs.queries[i] for i in keep], [vs.positives[i] for i in keep])


# ------------------------------------------------------------------ npy: official ground truth files

NPY_DB = ('{}_dbImages.npy', '{}_ref_image_names.npy')
NPY_Q = ('{}_qImages.npy', '{}_query_image_names.npy')
NPY_GT = ('{}_gt_25m.npy', '{}_gt.npy', '{}_pIdx.npy', '{}_ground_truth_25m.npy', '{}_ground_truth.npy')
NPY_QIDX = '{}_qIdx.npy'


def _npy_prefixes(folder: Path) -> list[str]:
    found = set()
    for pattern in NPY_DB:
        suffix = pattern.format('')
        found.update(p.name[:-len(suffix)] for p in folder.glob('*' + suffix))
    return sorted(found)


def _first_existing(base: Path, prefix: str, patterns: Sequence[str], what: str) -> Path:
    for pattern in patterns:
        path = base / pattern.format(prefix)
        if path.is_file():
            return path
    raise DatasetError(f'{base}: no {what} file for prefix {prefix!r}; expected one of '
                       + ', '.join(p.format(prefix) for p in patterns))


def _load_npy(path: Path, allow_pickle: bool = False) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=allow_pickle)
    except (OSError, ValueError) as err:
        raise DatasetError(f'{path}: cannot be read as .npy: {err}') from err


def load_npy(cfg: ValSetConfig) -> ValSet:
    root = Path(cfg.root)
    if not root.is_dir():
        raise DatasetError(f'{root}: not a folder (the npy layout needs the image root)')
    if cfg.prefix and ('/' in cfg.prefix or cfg.prefix.startswith('.')):
        gt_dir, prefix = Path(cfg.prefix).parent, Path(cfg.prefix).name   # ground truth kept elsewhere
    else:
        gt_dir, prefix = root, cfg.prefix
    if prefix is None:
        prefixes = _npy_prefixes(gt_dir)
        if len(prefixes) != 1:
            raise DatasetError(f'{gt_dir}: {"no" if not prefixes else "several"} ground-truth sets '
                               f'{prefixes if prefixes else ""} (files like PREFIX_dbImages.npy); name one with prefix')
        prefix = prefixes[0]
    db_file = _first_existing(gt_dir, prefix, NPY_DB, 'database list')
    q_file = _first_existing(gt_dir, prefix, NPY_Q, 'query list')
    gt_file = _first_existing(gt_dir, prefix, NPY_GT, 'ground-truth')
    db_names = _load_npy(db_file)
    q_names = _load_npy(q_file)
    qidx_file = gt_dir / NPY_QIDX.format(prefix)
    if qidx_file.is_file():      # MSLS-val as distributed with GSV-Cities: queries = qImages[qIdx]
        qidx = _load_npy(qidx_file).astype(np.int64)
        if qidx.size and (qidx.min() < 0 or qidx.max() >= len(q_names)):
            raise DatasetError(f'{qidx_file}: indices outside [0, {len(q_names)})')
        q_names = q_names[qidx]
    gt = _load_npy(gt_file, allow_pickle=True)
    if len(gt) != len(q_names):
        raise DatasetError(f'{gt_file}: {len(gt)} rows for {len(q_names)} queries ({q_file.name})')
    positives = []
    for i, row in enumerate(gt):
        try:
            pos = np.asarray(row, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise DatasetError(f'{gt_file}: row {i} is not a list of database indices: {row!r}') from None
        if pos.size and (pos.min() < 0 or pos.max() >= len(db_names)):
            raise DatasetError(f'{gt_file}: row {i} has indices outside [0, {len(db_names)}) ({db_file.name})')
        positives.append(pos)
    db = _resolve(root, db_names, db_file)
    qs = _resolve(root, q_names, q_file)
    empty = sum(1 for p in positives if not len(p))
    if empty:
        log.warning('%s: %d of %d queries have no positive in %s; recall@k leaves them out',
                    prefix, empty, len(positives), gt_file.name)
    return ValSet(cfg.name or prefix, 'npy', db, qs, positives)


def _resolve(root: Path, names: np.ndarray, listing: Path) -> list[Path]:
    paths = [root / str(n) for n in names]
    missing = [(i, p) for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        i, p = missing[0]
        raise DatasetError(f'{listing}: {len(missing)} of {len(paths)} images are missing under {root}; '
                           f'first: row {i} -> {p}')
    return paths


# ------------------------------------------------------------------ msls: Mapillary SLS folders

def _msls_side(city_dir: Path, side: str) -> tuple[list[Path], np.ndarray]:
    import pandas as pd
    folder = city_dir / side
    post = folder / 'postprocessed.csv'
    if not post.is_file():
        raise DatasetError(f'{post}: missing (MSLS layout: <city>/{side}/postprocessed.csv)')
    df = pd.read_csv(post, index_col=0)
    for col in ('key', 'easting', 'northing'):
        if col not in df.columns:
            raise DatasetError(f'{post}: no column {col!r} (columns: {", ".join(map(str, df.columns))})')
    raw = folder / 'raw.csv'
    if raw.is_file():
        raw_df = pd.read_csv(raw, index_col=0)
        if 'pano' in raw_df.columns:
            if len(raw_df) != len(df):
                raise DatasetError(f'{raw}: {len(raw_df)} rows but {post.name} has {len(df)}')
            pano = raw_df['pano'].astype(str).str.lower().isin(('true', '1')).to_numpy()
            if pano.any():
                log.info('%s: %d panoramas left out', folder, int(pano.sum()))
            df = df[~pano]
    xy = df[['easting', 'northing']].to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(xy).all(axis=1))
    if bad.size:
        raise DatasetError(f'{post}: row {int(bad[0])} (key {df["key"].iloc[bad[0]]}) has no valid easting/northing')
    paths = [folder / 'images' / f'{key}.jpg' for key in df['key'].astype(str)]
    missing = [(i, p) for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        i, p = missing[0]
        raise DatasetError(f'{post}: {len(missing)} of {len(paths)} images missing; first: row {i} -> {p}')
    return paths, xy


def load_msls(cfg: ValSetConfig) -> ValSet:
    root = Path(cfg.root)
    cities = cfg.cities or list(MSLS_VAL_CITIES)
    db_all: list[Path] = []
    q_all: list[Path] = []
    pos_all: list[np.ndarray] = []
    for city in cities:
        city_dir = next((d for d in (root / 'train_val' / city, root / city) if d.is_dir()), None)
        if city_dir is None:
            raise DatasetError(f'{root}: no folder train_val/{city} or {city} (MSLS layout)')
        db, db_xy = _msls_side(city_dir, 'database')
        qs, q_xy = _msls_side(city_dir, 'query')
        pos = positives_within(db_xy, q_xy, cfg.radius_m) if len(db) and len(qs) else [np.zeros(0, np.int64)] * len(qs)
        offset = len(db_all)
        db_all += db
        q_all += qs
        pos_all += [p + offset for p in pos]
    vs = ValSet(cfg.name or 'msls_val', 'msls', db_all, q_all, pos_all)
    return _drop_queries_without_positives(vs, cfg.radius_m)


LAYOUTS: dict[str, Callable[[ValSetConfig], ValSet]] = {
    'pitts': load_pitts,
    'npy': load_npy,
    'msls': load_msls,
}


def load_valset(cfg: ValSetConfig) -> ValSet:
    """Return the validation set described by ``cfg``; wrong layout names raise ConfigError."""
    try:
        loader = LAYOUTS[cfg.layout]
    except KeyError:
        raise ConfigError(f'unknown validation layout {cfg.layout!r}; valid: {", ".join(sorted(LAYOUTS))}') from None
    vs = loader(cfg)
    log.info('validation set %s', vs.describe())
    return vs


def parse_valset_spec(text: str) -> ValSetConfig:
    """``LAYOUT:PATH[:PREFIX]`` (command line) -> ValSetConfig, e.g. ``pitts:/data/pitts30k/val``."""
    layout, sep, rest = text.partition(':')
    if not sep or not rest:
        raise ConfigError(f'--val {text!r}: expected LAYOUT:PATH[:PREFIX] with LAYOUT one of '
                          f'{", ".join(sorted(LAYOUTS))}')
    if layout not in LAYOUTS:
        raise ConfigError(f'--val {text!r}: unknown layout {layout!r}; valid: {", ".join(sorted(LAYOUTS))}')
    root, _, prefix = rest.partition(':') if layout == 'npy' else (rest, '', '')
    return ValSetConfig(layout=layout, root=root, prefix=prefix or None)
