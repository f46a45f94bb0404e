"""The node's heavy start-up (its ``configure`` transition) from its parameter values.

The model and encoder backend, the map, the detector, as one ``FramePipeline``. No ROS imports: ``log`` is any
logger with info/warning methods (the node passes its ROS logger).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..pipeline import FramePipeline, auto_position_variance
from .parameters import detector_values, map_index_options


def attention_problem(cfg: Any, values: dict) -> str | None:
    """Why the attention.* values do not fit the model configuration ``cfg``, or None."""
    bad = [q for q in values['attention.queries'] if not -cfg.num_queries <= q < cfg.num_queries]
    if bad:
        return f'attention.queries {bad}: the model has {cfg.num_queries} queries'
    block = values['attention.block']
    if not -cfg.num_layers <= block < cfg.num_layers:
        return f'attention.block {block}: the model has {cfg.num_layers} BoQ blocks (-1 is the last)'
    return None


def build_pipeline(v: dict[str, Any], log: Any) -> tuple[FramePipeline, Path | None, float]:
    """Return (pipeline, map path or None, position variance of ~/relocalization in m^2).

    Checks the map path before the long model load; raises ``BoqVprError`` with what to do.
    """
    from ..detection import DetectorConfig, LoopClosureDetector
    from ..map import MANIFEST, MapDatabase, foreign_entries
    config = DetectorConfig.from_dict(detector_values(v))
    path = Path(v['map.path']).expanduser() if v['map.path'] else None
    if path is not None and path.exists() and not (path / MANIFEST).is_file() and \
            (not path.is_dir() or foreign_entries(path)):
        raise ConfigError(f'map.path {path} exists but is not a map directory (no {MANIFEST}); '
                          'choose a new or empty directory')
    if config.mode == 'localization' and (path is None or not (path / MANIFEST).is_file()):
        raise ConfigError(f'loop_closure.mode is localization but map.path {str(path or "")!r} holds no map; '
                          'build one first (slam mode, or `boq-vpr build-map`) and point map.path at it')
    encoder = load_encoder(v, log)
    if path is not None and (path / MANIFEST).is_file():
        log.info(f'loading map {path}...')
        db = MapDatabase.load(path, fingerprint=encoder.fingerprint, descriptor_dim=encoder.descriptor_dim)
        db.background_training = config.mode == 'slam'   # a trainable index trains while frames go on
        log.info(f'map {path}: {len(db)} keyframes, {db.index_type} index, sessions {db.sessions()}')
    else:
        db = MapDatabase(encoder.descriptor_dim, encoder.fingerprint, v['map.index_type'],
                         background_training=config.mode == 'slam', **map_index_options(v, v['map.index_type']))
        log.info(f'new empty map ({db.index_type} index)' +
                 (f', saved to {path}' if path is not None else ', in memory (map.path is empty)'))
    detector = LoopClosureDetector(db, config)
    detector.mapping = bool(v['mapping'])
    for text in config.warnings():
        log.warning(f'loop_closure: {text}')
    variance = v['relocalization.position_variance']
    if not variance:
        variance = auto_position_variance(db)
        if variance is not None:
            log.info(f'~/relocalization position variance {variance:.3g} m^2 (from the map\'s keyframe spacing)')
        else:   # no two posed keyframes in a row: no spacing to go by
            variance = 1.0
    return FramePipeline(encoder, detector), path, float(variance)


def load_encoder(v: dict[str, Any], log: Any):
    """Load the ``Encoder`` the parameters ask for, warmed up."""
    import torch
    from ..encoder import Encoder
    from ..models.checkpoint import RANDOM_WEIGHTS, resolve_weights
    warmup = [int(x) for x in v['encoder.warmup_image_size']]
    if len(warmup) != 2 or (warmup[0] > 0) != (warmup[1] > 0):
        raise ConfigError(f'encoder.warmup_image_size must be [height, width] or [0, 0], got {warmup}')
    if v['encoder.num_threads'] > 0:
        torch.set_num_threads(v['encoder.num_threads'])
    size = None
    if v['model.image_height'] or v['model.image_width']:
        if not (v['model.image_height'] and v['model.image_width']):
            raise ConfigError('set both model.image_height and model.image_width, or neither')
        size = (v['model.image_height'], v['model.image_width'])
    options: dict[str, Any] = {}
    if v['encoder.onnx_path']:
        options['onnx_path'] = v['encoder.onnx_path']
    if v['encoder.calibration']:
        options['calibration'] = v['encoder.calibration']
    if v['encoder.num_threads'] > 0:
        options['threads'] = v['encoder.num_threads']
    if v['attention.enable']:
        options['attention'] = True   # onnxruntime/openvino export the attention output too (same graph)
    if v['encoder.cache_dir']:
        from ..backends.engine_cache import CACHE_ENV
        os.environ[CACHE_ENV] = str(Path(v['encoder.cache_dir']).expanduser())
    weights = resolve_weights(v['model.name'], v['model.weights'])   # empty: the shipped weights, if any
    log.info(f'loading model {v["model.name"]} (weights: {weights or "none, random"}) on backend '
             f'{v["encoder.backend"]}/{v["encoder.device"]}/{v["encoder.precision"]} '
             '(building a TensorRT engine can take minutes the first time)...')
    t0 = time.monotonic()
    encoder = Encoder(v['model.name'], weights=weights if weights is not None else RANDOM_WEIGHTS,
                      backend=v['encoder.backend'], device=v['encoder.device'], batch_size=1, image_size=size,
                      resize_mode=v['model.resize_mode'], precision=v['encoder.precision'], **options)
    if weights is None:
        log.warning(f'model {v["model.name"]} has no weights (model.weights is {v["model.weights"]!r} and none '
                    'ship with it): the network has random weights, so no threshold (fixed or calibrated) '
                    'can tell places apart and its loop closures mean nothing; set model.weights to a '
                    'trained checkpoint, or use model.name resnet18_nordland')
    problem = attention_problem(encoder.config, v)
    if problem is not None:
        raise ConfigError(f'{problem} (model {encoder.config.name})')
    if v['encoder.warmup']:
        h, w = warmup
        if v['model.resize_mode'] == 'keep_aspect' and not h:
            log.info('model.resize_mode keep_aspect: the warm-up runs the network input size; set '
                     'encoder.warmup_image_size to the camera\'s [height, width] so that the first frame is not slow')
        encoder.warmup(h or None, w or None, attention=bool(v['attention.enable']))
    log.info(f'encoder ready in {time.monotonic() - t0:.1f} s: {encoder.describe()}')
    return encoder
