"""Start vpr_node (boq_vpr) with the installed config/vpr.yaml.

Examples::

    ros2 launch boq_vpr vpr.launch.py image_topic:=/camera/image_raw map_path:=$HOME/maps/site
    ros2 launch boq_vpr vpr.launch.py --show-args      # every argument with its description
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from boq_vpr.ros.launch_args import LAUNCH_ARGUMENTS, node_overrides


def _vpr_node(context, *args, **kwargs):
    values = {name: LaunchConfiguration(name).perform(context) for name in LAUNCH_ARGUMENTS}
    params, remappings = node_overrides(values)
    return [Node(
        package='boq_vpr',
        executable='vpr_node',
        name='vpr_node',
        namespace=values['namespace'],
        parameters=[values['params_file'], params],
        remappings=remappings,
        arguments=['--ros-args', '--log-level', values['log_level']],
        output='screen',
        emulate_tty=True,
        # time to save a large map on shutdown (the node ignores further signals while it saves)
        sigterm_timeout=values['shutdown_timeout'],
        sigkill_timeout=values['shutdown_timeout'],
    )]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory('boq_vpr'), 'config', 'vpr.yaml')
    arguments = [
        DeclareLaunchArgument(name, default_value=default if default is not None else default_params,
                              description=description)
        for name, (default, description) in LAUNCH_ARGUMENTS.items()
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=_vpr_node)])
