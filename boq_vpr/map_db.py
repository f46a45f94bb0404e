"""The map database (compatibility name): see ``boq_vpr.map``.

``from boq_vpr.map_db import MapDatabase, Keyframe, make_thumbnail`` keeps working; the code lives
in ``boq_vpr/map/`` (index, store, persist, database).
"""
from .map import (FORMAT, FORMAT_VERSION, INDEX_DEFAULTS, INDEX_TYPES, MANIFEST, RERANK_DEFAULT, Keyframe,
                  MapDatabase, encode_thumbnail, foreign_entries, make_thumbnail, min_train_size,
                  resolve_index_options)

__all__ = ['FORMAT', 'FORMAT_VERSION', 'INDEX_DEFAULTS', 'INDEX_TYPES', 'MANIFEST', 'RERANK_DEFAULT', 'Keyframe',
           'MapDatabase', 'encode_thumbnail', 'foreign_entries', 'make_thumbnail', 'min_train_size',
           'resolve_index_options']
