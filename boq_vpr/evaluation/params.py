"""The node's parameters file read for an evaluation: the detector configuration it gives."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import yaml

from ..errors import ConfigError
from ..detection import DetectorConfig
from ..ros.parameters import DETECTOR_PREFIX, detector_values

log = logging.getLogger(__name__)


def _flatten(d: dict, prefix: str = '') -> dict:
    out = {}
    for k, v in d.items():
        key = f'{prefix}{k}'
        if isinstance(v, dict):
            out.update(_flatten(v, key + '.'))
        else:
            out[key] = v
    return out


def load_params(path: str | Path, node: str | None = None) -> dict:
    """Read the flat ``name -> value`` parameters of a ROS 2 parameters file.

    The file's section ``/**:`` or a node name, then ``ros__parameters``; nested keys joined with
    dots).
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f'{path}: cannot read the parameters file: {err}') from err
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: not a ROS 2 parameters file (expected "/**: ros__parameters: ...")')
    sections = {k: v.get('ros__parameters') for k, v in data.items()
                if isinstance(v, dict) and isinstance(v.get('ros__parameters'), dict)}
    if not sections:
        raise ConfigError(f'{path}: no "ros__parameters" section (expected "/**: ros__parameters: ...")')
    params: dict = {}
    for name in sorted(sections, key=lambda k: (k != '/**', k)):   # wildcard first, node names override
        if node is None or name in ('/**', node, '/' + node.lstrip('/')):
            params.update(_flatten(sections[name]))
    return params


def parse_overrides(items: Sequence[str]) -> dict:
    """['min_score=0.5', 'temporal_consistency=3'] -> dict, values parsed as YAML scalars."""
    out = {}
    for item in items:
        key, sep, value = item.partition('=')
        if not sep or not key.strip():
            raise ConfigError(f'--set expects KEY=VALUE (a DetectorConfig field), got {item!r}')
        key = key.strip()
        if key.startswith(DETECTOR_PREFIX):
            key = key[len(DETECTOR_PREFIX):]
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f'--set {item!r}: the value is not a YAML scalar ({err})') from None
    return out


def detector_config(params: dict | None = None, overrides: dict | None = None, mode: str = 'slam') -> DetectorConfig:
    """Make the ``DetectorConfig`` of node parameters.

    From the ``loop_closure.*`` entries of node parameters, then overrides, with ``mode`` forced
    (the evaluation mode decides it).
    """
    values = detector_values(params or {})
    values.update(overrides or {})
    if values.get('mode', mode) != mode:
        log.info('detector mode %s from the parameters replaced by %s (the evaluation mode)', values['mode'], mode)
    values['mode'] = mode
    return DetectorConfig.from_dict(values)


# ------------------------------------------------------------------------------------------ running
