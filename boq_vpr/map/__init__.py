"""The map database: keyframe descriptors in a FAISS index plus keyframe metadata, on disk as a directory.

``index`` (vector index: types, options, search), ``training`` (training of the index, in
the calling thread or in the background), ``store`` (keyframe metadata, thumbnails and
full descriptors in SQLite), ``persist`` (manifest, atomic save, checks on load) and ``database``
(``MapDatabase``, the facade the detector, node and tools use).
"""
from .database import MapDatabase
from .index import INDEX_DEFAULTS, INDEX_TYPES, RERANK_DEFAULT, resolve_index_options
from .persist import FORMAT, FORMAT_VERSION, MANIFEST, foreign_entries
from .store import Keyframe, encode_thumbnail, make_thumbnail
from .training import min_train_size

__all__ = ['FORMAT', 'FORMAT_VERSION', 'INDEX_DEFAULTS', 'INDEX_TYPES', 'MANIFEST', 'RERANK_DEFAULT', 'Keyframe',
           'MapDatabase', 'encode_thumbnail', 'foreign_entries', 'make_thumbnail', 'min_train_size',
           'resolve_index_options']
