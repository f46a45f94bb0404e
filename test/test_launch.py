"""config/vpr.yaml and launch/vpr.launch.py.

The defaults file parses (with PyYAML and with rcl's own
parser) and holds exactly the node's declared parameters with valid values; the launch arguments
are described and map onto declared parameters and remappings.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import yaml

from boq_vpr.ros.launch_args import LAUNCH_ARGUMENTS, node_overrides
from boq_vpr.ros.parameters import detector_values, node_parameters, validate

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / 'config' / 'vpr.yaml'
LAUNCH = ROOT / 'launch' / 'vpr.launch.py'


def _config_params() -> dict:
    data = yaml.safe_load(CONFIG.read_text())
    assert list(data) == ['/**'] and list(data['/**']) == ['ros__parameters']
    return data['/**']['ros__parameters']


def test_config_holds_every_declared_parameter_with_a_valid_value():
    from boq_vpr.detection import DetectorConfig
    params = _config_params()
    specs = {s.name: s for s in node_parameters()}
    undeclared = sorted(set(params) - set(specs))
    assert not undeclared, f'config/vpr.yaml sets undeclared parameters: {undeclared}'
    missing = sorted(set(specs) - set(params))
    assert not missing, f'config/vpr.yaml lacks: {missing}'
    for name, value in params.items():
        assert validate(specs[name], value) is None, (name, value)
    DetectorConfig.from_dict(detector_values(params))


def test_rcl_parses_the_config_into_typed_parameters():
    rclpy = pytest.importorskip('rclpy', reason='needs rclpy')
    from rclpy.context import Context
    from rclpy.node import Node
    from boq_vpr.ros.node_parameters import descriptor as _descriptor
    ctx = Context()
    rclpy.init(context=ctx, args=['--ros-args', '--params-file', str(CONFIG)], domain_id=200 + os.getpid() % 30)
    try:
        node = Node('vpr_node', context=ctx)
        params = _config_params()
        for spec in node_parameters():
            value = node.declare_parameter(spec.name, spec.default, _descriptor(spec)).value
            assert value == params[spec.name] and type(value) is type(spec.default), spec.name
        # ranges are enforced by ROS on set
        from rclpy.parameter import Parameter
        result = node.set_parameters([Parameter('qos.depth', value=0)])[0]
        assert not result.successful
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=ctx)


def test_launch_arguments_are_described_and_map_onto_declared_parameters():
    for name in ('params_file', 'image_topic', 'odom_topic', 'map_path', 'namespace', 'use_sim_time', 'log_level'):
        assert name in LAUNCH_ARGUMENTS and len(LAUNCH_ARGUMENTS[name][1]) > 10, name
    defaults = {k: v for k, (v, _) in LAUNCH_ARGUMENTS.items() if v is not None}
    params, remaps = node_overrides(defaults)
    # empty arguments leave the params file alone; autostart takes the lifecycle node to active
    assert params == {'use_sim_time': False, 'autostart': True}
    assert remaps == [('image', '/camera/image_raw'), ('image/compressed', '/camera/image_raw/compressed'),
                      ('odom', '/odom')]
    params, remaps = node_overrides(defaults | {'map_path': '/maps/a', 'mode': 'localization', 'weights': '/w.pth',
                                                'model': 'resnet50_16384',
                                                'image_transport': 'compressed', 'use_odom': 'true',
                                                'use_sim_time': 'True', 'image_topic': '/cam/'})
    specs = {s.name: s for s in node_parameters()}
    for name, value in params.items():
        if name != 'use_sim_time':   # rclpy's own parameter
            assert validate(specs[name], value) is None, name
    assert params['use_sim_time'] is True and params['loop_closure.mode'] == 'localization'
    assert (params['model.name'], params['model.weights']) == ('resnet50_16384', '/w.pth')
    assert ('image/compressed', '/cam/compressed') in remaps
    assert node_overrides(defaults | {'autostart': 'false'})[0]['autostart'] is False
    for bad in ({'mode': 'mapping'}, {'use_sim_time': 'maybe'}, {'autostart': 'later'}, {'log_level': 'loud'},
                {'image_transport': 'ffmpeg'}, {'shutdown_timeout': '-1'}, {'shutdown_timeout': 'soon'}):
        with pytest.raises(ValueError):
            node_overrides(defaults | bad)


def test_launch_file_declares_every_argument_and_starts_vpr_node():
    tree = ast.parse(LAUNCH.read_text())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert 'generate_launch_description' in functions
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert {'LAUNCH_ARGUMENTS', 'node_overrides', 'DeclareLaunchArgument', 'Node',
            'get_package_share_directory'} <= imported
    keywords = {k.arg: k.value for n in ast.walk(tree) if isinstance(n, ast.Call) for k in n.keywords}
    assert ast.literal_eval(keywords['executable']) == 'vpr_node'
    assert ast.literal_eval(keywords['package']) == 'boq_vpr'
    assert 'description' in keywords and 'remappings' in keywords and 'parameters' in keywords
    assert 'sigterm_timeout' in keywords and 'sigkill_timeout' in keywords


def test_launch_description_builds_on_a_ros_install(tmp_path, monkeypatch):
    """The real launch system (launch, launch_ros: a ROS install) builds the description and the node action.

    The package is found through an ament index made here (no sourced workspace needed).
    """
    pytest.importorskip('launch_ros', reason='launch_ros comes with a ROS 2 install (not on PyPI)')
    import importlib.util
    import shutil
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument
    from launch_ros.actions import Node
    prefix = tmp_path / 'install'
    index = prefix / 'share' / 'ament_index' / 'resource_index' / 'packages'
    index.mkdir(parents=True)
    (index / 'boq_vpr').write_text('')
    (prefix / 'share' / 'boq_vpr' / 'config').mkdir(parents=True)
    shutil.copy(CONFIG, prefix / 'share' / 'boq_vpr' / 'config' / 'vpr.yaml')
    monkeypatch.setenv('AMENT_PREFIX_PATH', os.pathsep.join(p for p in (str(prefix), os.environ.get(
        'AMENT_PREFIX_PATH', '')) if p))
    spec = importlib.util.spec_from_file_location('vpr_launch', LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ld = module.generate_launch_description()
    arguments = {e.name: e for e in ld.entities if isinstance(e, DeclareLaunchArgument)}
    assert set(arguments) == set(LAUNCH_ARGUMENTS)
    context = LaunchContext()
    for name, arg in arguments.items():
        context.launch_configurations[name] = ''.join(s.perform(context) for s in arg.default_value)
    assert context.launch_configurations['params_file'] == str(prefix / 'share' / 'boq_vpr' / 'config' / 'vpr.yaml')
    context.launch_configurations['autostart'] = 'false'
    (node,) = module._vpr_node(context)
    assert isinstance(node, Node) and node.node_executable == 'vpr_node'


def test_setup_installs_the_node_the_launch_file_and_the_config():
    text = (ROOT / 'setup.py').read_text()
    assert "'vpr_node = boq_vpr.ros.node:main'" in text
    assert "glob('launch/*.launch.py')" in text and "glob('config/*.yaml')" in text


@pytest.mark.parametrize('autostart, state', [('true', 'active'), ('false', 'unconfigured')])
def test_ros2_launch_starts_the_lifecycle_node(tmp_path, monkeypatch, autostart, state):
    """`ros2 launch boq_vpr vpr.launch.py` (the launch service the command runs) starts vpr_node.

    `autostart` takes it to active or leaves it for a lifecycle manager.
    """
    pytest.importorskip('launch_ros', reason='launch_ros comes with a ROS 2 install (not on PyPI)')
    pytest.importorskip('rclpy', reason='needs rclpy')
    import shutil
    import sys
    import threading
    from launch import LaunchDescription, LaunchService
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    from boq_vpr.ros.client import VprClient
    executable = Path(sys.executable).parent / 'vpr_node'
    if not executable.exists():
        pytest.skip(f'{executable} not installed (pip install -e .)')
    prefix = tmp_path / 'install'     # an ament prefix as colcon installs one
    (prefix / 'share' / 'ament_index' / 'resource_index' / 'packages').mkdir(parents=True)
    (prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'boq_vpr').write_text('')
    (prefix / 'share' / 'boq_vpr' / 'config').mkdir(parents=True)
    shutil.copy(CONFIG, prefix / 'share' / 'boq_vpr' / 'config' / 'vpr.yaml')
    (prefix / 'lib' / 'boq_vpr').mkdir(parents=True)
    (prefix / 'lib' / 'boq_vpr' / 'vpr_node').symlink_to(executable)
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(prefix))
    domain = 230 + os.getpid() % 2
    monkeypatch.setenv('ROS_DOMAIN_ID', str(domain))
    service = LaunchService()
    service.include_launch_description(LaunchDescription([IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(LAUNCH)),
        launch_arguments={'image_topic': '/image', 'model': 'resnet18_1024', 'weights': 'random',
                          'autostart': autostart}.items())]))
    seen: dict = {}

    def probe() -> None:
        client = VprClient(domain)
        try:
            client.wait_until(lambda: client.diagnostics() is not None and client.srv_get_state.service_is_ready(), 120)
            seen['state'] = client.lifecycle_state()
            seen['diagnostics'] = client.wait_for_diagnostics(lambda d: d['lifecycle_state'] == seen['state'], 10)
        finally:
            client.close()
            service.shutdown()
    thread = threading.Thread(target=probe)
    thread.start()
    assert service.run() == 0
    thread.join(30)
    assert seen.get('state') == state
    if state == 'active':
        assert seen['diagnostics']['model'] == 'resnet18_1024'    # the launch argument reached the node
