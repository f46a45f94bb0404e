"""The repository builds as a ROS 2 ament_python package and installs where `ros2 run` looks."""
from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_package_xml_declares_runtime_dependencies():
    root = ET.parse(ROOT / 'package.xml').getroot()
    assert root.get('format') == '3'
    assert root.findtext('name') == 'boq_vpr'
    exec_deps = {e.text for e in root.findall('exec_depend')}
    for dep in ('rclpy', 'sensor_msgs', 'std_msgs', 'geometry_msgs', 'nav_msgs', 'visualization_msgs',
                'diagnostic_msgs', 'std_srvs', 'cv_bridge'):
        assert dep in exec_deps, dep
    assert 'python3-pytest' in {e.text for e in root.findall('test_depend')}
    assert root.find('export').findtext('build_type') == 'ament_python'


def test_colcon_build_installs_scripts_launch_and_config(tmp_path):
    colcon = shutil.which('colcon') or str(Path(sys.executable).parent / 'colcon')
    if not Path(colcon).exists():
        pytest.skip('colcon is not installed (pip install colcon-common-extensions)')
    src = tmp_path / 'src'
    src.mkdir()
    (src / 'boq_vpr').symlink_to(ROOT)
    out = subprocess.run([colcon, 'build', '--base-paths', 'src', '--build-base', 'build', '--install-base', 'install'],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    share = tmp_path / 'install' / 'boq_vpr' / 'share' / 'boq_vpr'
    assert (share / 'package.xml').exists()
    assert (tmp_path / 'install' / 'boq_vpr' / 'lib' / 'boq_vpr' / 'boq-vpr').exists()
    assert (tmp_path / 'install' / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'boq_vpr').exists() or \
        (share.parent / 'ament_index' / 'resource_index' / 'packages' / 'boq_vpr').exists()
    for sub in ('launch', 'config'):
        files = {p.name for p in (ROOT / sub).glob('*') if p.is_file()}
        assert files <= {p.name for p in (share / sub).glob('*')}, sub
    # the shipped weights are package data (boq_vpr/weights/*.pt)
    installed = list((tmp_path / 'install' / 'boq_vpr').glob('lib/python*/site-packages/boq_vpr/weights/*.pt'))
    assert {p.name for p in installed} >= {'resnet18_nordland.pt'}, installed
    # so is the demo drive (the Nordland section the demo and the tests read)
    for season in ('summer', 'winter'):
        frames = list((tmp_path / 'install' / 'boq_vpr').glob(
            f'lib/python*/site-packages/boq_vpr/data/nordland_heldout/{season}/*.png'))
        assert len(frames) == 1176, (season, len(frames))


def test_wheel_carries_the_shipped_weights_and_frames(tmp_path):
    import zipfile
    out = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q',
                          '-w', str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    wheel = next(tmp_path.glob('boq_vpr-*.whl'))
    names = zipfile.ZipFile(wheel).namelist()
    assert 'boq_vpr/weights/resnet18_nordland.pt' in names
    for season in ('summer', 'winter'):
        assert sum(n.startswith(f'boq_vpr/data/nordland_heldout/{season}/images-') for n in names) == 1176, season
    assert 'boq_vpr/data/nordland_heldout/README.md' in names
    assert 'training/configs/resnet18_nordland.yaml' in names
