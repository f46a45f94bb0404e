"""Arguments of ``launch/vpr.launch.py`` and what they turn into.

No ROS or launch imports, so that the mapping is tested without a ROS install.
"""
from __future__ import annotations

from typing import Any

from ..values import parse_bool

# name -> (default, description); a default of None means "computed by the launch file"
LAUNCH_ARGUMENTS: dict[str, tuple[str | None, str]] = {
    'params_file': (None, 'parameters of vpr_node (YAML, `/**: ros__parameters:`); default: the installed '
                          'config/vpr.yaml'),
    'namespace': ('', 'namespace of the node (its topics become <namespace>/vpr_node/...)'),
    'image_topic': ('/camera/image_raw', 'camera topic (sensor_msgs/Image); with image_transport:=compressed, '
                                         '<image_topic>/compressed is subscribed'),
    'image_transport': ('', 'raw or compressed; empty: as in the params file'),
    'odom_topic': ('/odom', 'odometry topic (nav_msgs/Odometry) giving keyframes their poses'),
    'use_odom': ('', 'true or false: subscribe odom_topic; empty: as in the params file'),
    'map_path': ('', 'map directory (loaded when it holds a map, saved to on ~/save_map and shutdown); '
                     'empty: as in the params file'),
    'mode': ('', 'slam or localization; empty: as in the params file'),
    'model': ('', 'model configuration (model.name), e.g. resnet50_16384 or dinov2_12288 for the official weights; '
                  'empty: as in the params file (shipped: resnet18_nordland, a demonstration model)'),
    'weights': ('', 'model weight file; empty: as in the params file'),
    'autostart': ('true', 'true: the node configures and activates itself (a lifecycle node); false: leave it '
                          'unconfigured for a lifecycle manager (nav2_lifecycle_manager) or `ros2 lifecycle set`'),
    'use_sim_time': ('false', 'use the /clock topic (bag replay) as time source'),
    'log_level': ('info', 'log level of the node: debug, info, warn, error or fatal'),
    'shutdown_timeout': ('30', 'seconds the node gets after Ctrl-C to save its map before the launch system '
                               'sends SIGTERM, and again before SIGKILL (launch default: 5)'),
}

LOG_LEVELS = ('debug', 'info', 'warn', 'error', 'fatal')


def _bool(name: str, text: str) -> bool:
    return parse_bool(f'launch argument {name}', text)


def node_overrides(values: dict[str, str]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Launch argument values -> (parameter overrides on top of the params file, remappings).

    Empty optional arguments leave the params file's value alone.
    """
    params: dict[str, Any] = {'use_sim_time': _bool('use_sim_time', values.get('use_sim_time', 'false')),
                              'autostart': _bool('autostart', values.get('autostart', 'true'))}
    if values.get('map_path'):
        params['map.path'] = values['map_path']
    if values.get('model'):
        params['model.name'] = values['model']
    if values.get('weights'):
        params['model.weights'] = values['weights']
    if values.get('mode'):
        if values['mode'] not in ('slam', 'localization'):
            raise ValueError(f'launch argument mode must be slam or localization, got {values["mode"]!r}')
        params['loop_closure.mode'] = values['mode']
    if values.get('image_transport'):
        if values['image_transport'] not in ('raw', 'compressed'):
            raise ValueError(f'launch argument image_transport must be raw or compressed, '
                             f'got {values["image_transport"]!r}')
        params['image_transport'] = values['image_transport']
    if values.get('use_odom'):
        params['use_odom'] = _bool('use_odom', values['use_odom'])
    try:
        if not float(values.get('shutdown_timeout', '30')) > 0:
            raise ValueError
    except ValueError:
        raise ValueError(f'launch argument shutdown_timeout must be a positive number of seconds, '
                         f'got {values.get("shutdown_timeout")!r}') from None
    level = values.get('log_level', 'info').lower()
    if level not in LOG_LEVELS:
        raise ValueError(f'launch argument log_level must be one of {", ".join(LOG_LEVELS)}, got {level!r}')
    image = values.get('image_topic') or 'image'
    remaps = [('image', image), ('image/compressed', image.rstrip('/') + '/compressed'),
              ('odom', values.get('odom_topic') or 'odom')]
    return params, remaps
