"""A map on disk: the manifest, the atomic save, and the checks on load.

A map directory holds ``manifest.json`` (format version, model fingerprint, descriptor size, index
type and options, count, checksums of the data files) and one ``data-NNNNNN/`` folder with
``index.faiss`` (FAISS's own format), ``keyframes.sqlite`` (ids, stamps, poses, frames, sources,
sessions, PNG thumbnails, full descriptors for re-ranking), ``ids.npy`` and, while a trainable
index still collects its training set, ``pending.npy``. Nothing is pickled. Saving writes a new
data folder and then replaces the manifest in one ``os.replace``, so a crash at any point leaves
the previous map readable.

``write_map`` works from a ``Snapshot`` taken under the map's lock in constant or memory-copy time;
the writing, fsyncs and checksums run outside the lock, while the map keeps serving.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from .. import __version__
from ..errors import MapError
from ..values import file_sha256
from .store import DB_FILE, KeyframeStore

FORMAT = 'boq_vpr-map'
FORMAT_VERSION = 1
MANIFEST = 'manifest.json'
INDEX_FILE = 'index.faiss'
IDS_FILE = 'ids.npy'
PENDING_FILE = 'pending.npy'
_DATA_DIR = re.compile(r'data-\d{6}')


@dataclass
class Snapshot:
    """What a save writes, fixed at one instant: later changes to the map do not reach it."""

    manifest: dict                 # manifest fields without generation, data_dir, files
    index: faiss.Index | np.ndarray  # a copy, or its serialization
    ids: np.ndarray                # a view of an append-only buffer (stable)
    pending: np.ndarray | None     # likewise
    reader: sqlite3.Connection     # a read transaction on the metadata store


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, 'rb+') as f:
        os.fsync(f.fileno())


def _own_entry(name: str) -> bool:
    """Entries a map directory may hold besides the manifest, interrupted saves included."""
    return bool(_DATA_DIR.fullmatch(name)) or name.startswith('.data-tmp-') or \
        (name.startswith('.manifest-') and name.endswith('.json'))


def foreign_entries(path: str | Path) -> list[str]:
    """List the names in directory ``path`` that a map never writes.

    Empty when ``path`` is a map, an empty or missing directory, or the leftovers of a save
    interrupted before its manifest.
    """
    path = Path(path)
    if not path.is_dir():
        return []
    return sorted(c.name for c in path.iterdir() if c.name != MANIFEST and not _own_entry(c.name))


def check_target(path: Path) -> None:
    """Refuse to write a map over a file or into a folder of other files."""
    if path.exists() and not path.is_dir():
        raise MapError(f'{path} exists and is not a directory; choose another map path')
    foreign = foreign_entries(path)
    if foreign and not (path / MANIFEST).exists():
        raise MapError(f'{path} holds other files ({", ".join(foreign[:3])}{", ..." if len(foreign) > 3 else ""}) '
                       f'and no {MANIFEST}; refusing to write a map into it (choose an empty or new directory)')


def _read_manifest_quiet(path: Path) -> dict | None:
    try:
        return json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _remove_stale(path: Path, keep: str) -> None:
    """Delete data folders other than the current one (old generations, interrupted saves)."""
    for child in path.iterdir():
        if child.name == keep or not child.is_dir():
            continue
        if child.name.startswith('data-') or child.name.startswith('.data-tmp-'):
            shutil.rmtree(child, ignore_errors=True)
    for child in path.glob('.manifest-*.json'):
        try:
            child.unlink()
        except OSError:
            pass


def _write_data(folder: Path, snap: Snapshot) -> dict:
    if isinstance(snap.index, np.ndarray):   # serialized by faiss.serialize_index
        with open(folder / INDEX_FILE, 'wb') as f:
            f.write(memoryview(snap.index))
    else:
        faiss.write_index(snap.index, str(folder / INDEX_FILE))
    np.save(folder / IDS_FILE, snap.ids, allow_pickle=False)
    names = [INDEX_FILE, IDS_FILE, DB_FILE]
    if snap.pending is not None:
        np.save(folder / PENDING_FILE, snap.pending, allow_pickle=False)
        names.append(PENDING_FILE)
    KeyframeStore.copy_to(snap.reader, folder / DB_FILE)
    files = {}
    for name in names:
        _fsync_file(folder / name)
        files[name] = {'bytes': (folder / name).stat().st_size, 'sha256': file_sha256(folder / name)}
    _fsync_dir(folder)
    return files


def write_map(path: Path, snap: Snapshot) -> dict:
    """Write ``snap`` as the map in directory ``path`` (created if needed), atomically.

    Returns the manifest written. Callers serialize saves to one path.
    """
    path.mkdir(parents=True, exist_ok=True)
    manifest = dict(snap.manifest)
    tmp = Path(tempfile.mkdtemp(prefix='.data-tmp-', dir=path))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a map is ordinary data
    try:
        files = _write_data(tmp, snap)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = _read_manifest_quiet(path)
    # past every data folder present, so that the live one is never the one replaced
    present = [int(c.name[5:]) for c in path.iterdir() if _DATA_DIR.fullmatch(c.name)]
    old_generation = old.get('generation', 0) if isinstance(old, dict) else 0
    generation = max([old_generation if isinstance(old_generation, int) else 0, *present]) + 1
    data_dir = f'data-{generation:06d}'
    if (path / data_dir).exists():  # leftover of an interrupted save
        shutil.rmtree(path / data_dir)
    os.rename(tmp, path / data_dir)
    _fsync_dir(path)
    manifest.update({'generation': generation, 'data_dir': data_dir, 'files': files,
                     'saved_utc': _dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')})
    fd, tmp_manifest = tempfile.mkstemp(prefix='.manifest-', suffix='.json', dir=path)
    os.chmod(tmp_manifest, 0o644)
    with os.fdopen(fd, 'w') as f:
        json.dump(manifest, f, indent=2)
        f.write('\n')
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_manifest, path / MANIFEST)  # the commit point
    _fsync_dir(path)
    _remove_stale(path, keep=data_dir)
    return manifest


def read_manifest(path: Path, fingerprint: str | None = None, descriptor_dim: int | None = None) -> dict:
    """Return the manifest of the map at ``path`` after checking it and every data file's size and checksum.

    MapError names what is wrong and what to do.
    """
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise MapError(f'{path} is not a map: {MANIFEST} is missing (build one with `boq-vpr build-map`)')
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MapError(f'{manifest_path} is corrupt or unreadable: {err}') from err
    if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
        raise MapError(f'{manifest_path} is not a boq_vpr map manifest')
    if manifest.get('format_version') != FORMAT_VERSION:
        raise MapError(f'{manifest_path}: map format version {manifest.get("format_version")} is not supported '
                       f'by boq_vpr {__version__} (reads version {FORMAT_VERSION}); rebuild the map')
    required = ('fingerprint', 'descriptor_dim', 'index_type', 'index_options', 'count', 'next_id',
                'data_dir', 'files')
    missing = [k for k in required if k not in manifest]
    if missing:
        raise MapError(f'{manifest_path} lacks {", ".join(missing)}; the map is corrupt')
    try:
        m_fp, m_dim = str(manifest['fingerprint']), int(manifest['descriptor_dim'])
        files = {str(name): (int(info['bytes']), str(info['sha256'])) for name, info in manifest['files'].items()}
        if not isinstance(manifest['index_options'], dict) or not _DATA_DIR.fullmatch(str(manifest['data_dir'])):
            raise ValueError('index_options or data_dir malformed')
        int(manifest['count']), int(manifest['next_id'])
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise MapError(f'{manifest_path} is malformed ({type(err).__name__}: {err}); the map is corrupt') from err
    problems = []
    if fingerprint is not None and fingerprint != m_fp:
        problems.append(f'model fingerprint {m_fp!r} (this encoder: {fingerprint!r})')
    if descriptor_dim is not None and int(descriptor_dim) != m_dim:
        problems.append(f'descriptor size {m_dim} (this encoder: {descriptor_dim})')
    if problems:
        raise MapError(f'map {path} was built with ' + ' and '.join(problems) +
                       '; load it with the model that built it, or rebuild the map with this model')
    data = path / manifest['data_dir']
    for name, (expected_bytes, expected_sha) in files.items():
        f = data / name
        if not f.is_file():
            raise MapError(f'{f} is missing; the map is incomplete (restore it or rebuild the map)')
        size = f.stat().st_size
        if size != expected_bytes:
            raise MapError(f'{f} is truncated or altered: {size} bytes, the manifest says {expected_bytes}; '
                           f'restore it or rebuild the map')
        if file_sha256(f) != expected_sha:
            raise MapError(f'{f} is corrupt (checksum mismatch); restore it or rebuild the map')
    return manifest


def read_data(data: Path) -> tuple[faiss.Index, np.ndarray, np.ndarray | None]:
    """(index, ids, pending vectors or None) of a checked data folder."""
    try:
        index = faiss.read_index(str(data / INDEX_FILE))
    except RuntimeError as err:
        raise MapError(f'{data / INDEX_FILE} cannot be read by FAISS {faiss.__version__}: {err}') from err
    try:
        ids = np.load(data / IDS_FILE, allow_pickle=False).astype(np.int64)
        pending = None
        if (data / PENDING_FILE).exists():
            pending = np.load(data / PENDING_FILE, allow_pickle=False).astype(np.float32)
    except (ValueError, OSError) as err:
        raise MapError(f'{data}: id or pending-vector file is corrupt: {err}') from err
    return index, ids, pending
