"""The package layout follows the data flow.

Rclpy is imported only in ``boq_vpr/ros/``, thin commands that do not import each other, a training
module independent of the command line, small modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'boq_vpr'
MAX_LINES = 500


def _modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob('*.py') if '__pycache__' not in p.parts)


def _name(path: Path) -> str:
    """Dotted module name of a file under the repository root."""
    parts = list(path.relative_to(ROOT).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


def imported(path: Path) -> set[str]:
    """Return every module a file imports, as absolute dotted names.

    Imports at the top and inside functions count; ``from a import b`` gives ``a`` and ``a.b``
    (``b`` may be a module).
    """
    tree = ast.parse(path.read_text(), str(path))
    package = _name(path) if path.name == '__init__.py' else _name(path).rpartition('.')[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - (node.level - 1)]
                module = '.'.join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ''
            out.add(module)
            out.update(f'{module}.{alias.name}' for alias in node.names)
    return out


def test_imports_are_resolved_to_absolute_names():
    names = imported(PACKAGE / 'commands' / 'bench.py')
    assert 'boq_vpr.commands.common' in names and 'boq_vpr.commands.common.CommandParser' in names
    assert 'boq_vpr.errors' in imported(PACKAGE / 'cli.py')


def test_rclpy_is_imported_only_in_the_ros_package():
    found = [f'{p.relative_to(ROOT)}: {m}' for folder in (PACKAGE, ROOT / 'training') for p in _modules(folder)
             if (PACKAGE / 'ros') not in p.parents
             for m in sorted(imported(p)) if m == 'rclpy' or m.startswith('rclpy.')]
    assert not found, 'rclpy outside boq_vpr/ros/:\n' + '\n'.join(found)


def test_commands_do_not_import_each_other():
    folder = PACKAGE / 'commands'
    commands = {_name(p) for p in _modules(folder)} - {'boq_vpr.commands', 'boq_vpr.commands.common'}
    found = []
    for p in _modules(folder):
        own = _name(p)
        for m in sorted(imported(p)):
            target = next((c for c in commands if m == c or m.startswith(c + '.')), None)
            if target is not None and target != own:
                found.append(f'{p.relative_to(ROOT)}: {m}')
    assert not found, 'a command module imports another one (shared code goes to commands/common.py or the ' \
                      'library):\n' + '\n'.join(found)


def test_training_does_not_import_the_commands():
    found = [f'{p.relative_to(ROOT)}: {m}' for p in _modules(ROOT / 'training') for m in sorted(imported(p))
             if m == 'boq_vpr.commands' or m.startswith('boq_vpr.commands.')]
    assert not found, 'training/ imports boq_vpr.commands:\n' + '\n'.join(found)


@pytest.mark.parametrize('path', _modules(PACKAGE), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_are_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f'{path.relative_to(ROOT)} has {lines} lines (at most {MAX_LINES})'


def test_the_package_root_holds_only_the_pipeline_and_its_entry_points():
    # input, evaluation, ROS, map, detection, backends and commands each have their folder
    root = sorted(p.stem for p in PACKAGE.glob('*.py'))
    assert root == ['__init__', 'cli', 'demo', 'encoder', 'errors', 'node', 'pipeline', 'preprocessing', 'values'], \
        root


def test_python_m_boq_vpr_node_runs_the_node():
    # `python -m boq_vpr.node` (the user guide's way without a ROS install) starts boq_vpr.ros.node
    pytest.importorskip('rclpy', reason='needs rclpy (pip install -e .[ros])')
    import boq_vpr.node
    import boq_vpr.ros.node
    assert boq_vpr.node.main is boq_vpr.ros.node.main
    assert "if __name__ == '__main__':" in (PACKAGE / 'node.py').read_text()
