"""The static TensorRT API check: mypy against tensorrt-stubs over every file that calls TensorRT.

No machine that runs CI has TensorRT or a GPU, so this check (with the ONNX operator coverage of
``test_trt_ops.py``) is all the verification the TensorRT code gets there. It must pass on the real
files and fail on a copy with one TensorRT API name changed. Skips with the reason where mypy or
the stubs are missing (``./boq.sh`` installs both: mypy with the ``test`` extra, the stubs into
``<venv>/trt-stubs``).
"""
from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent
checker = load_script('check_tensorrt_types')

CACHE = ROOT / '.mypy_cache' / 'boq_vpr'


def _stubs_or_skip() -> Path:
    if importlib.util.find_spec('mypy') is None:
        pytest.skip('mypy is not installed (it is in the "test" extra; ./boq.sh installs it)')
    try:
        return checker.find_stubs()
    except checker.StubsError as err:
        pytest.skip(str(err))


@pytest.fixture(scope='module')
def stubs() -> Path:
    return checker.patched_stubs(_stubs_or_skip(), CACHE)


def _copy_repo(dst: Path) -> Path:
    """List the Python sources and setup.cfg of the repository (no weights, caches or data)."""
    ignore = shutil.ignore_patterns('__pycache__', '*.pt', '*.pth', '*.onnx', '*.engine', 'weights')
    for name in ('boq_vpr', 'test', 'training'):
        shutil.copytree(ROOT / name, dst / name, ignore=ignore)
    shutil.copy(ROOT / 'setup.cfg', dst / 'setup.cfg')
    return dst


def test_every_file_that_imports_tensorrt_is_checked():
    pattern = re.compile(r'^\s*(import tensorrt\b|from tensorrt\b)', re.M)
    importers = sorted(str(p.relative_to(ROOT)) for folder in ('boq_vpr', 'test', 'training', 'scripts')
                       for p in (ROOT / folder).rglob('*.py') if pattern.search(p.read_text(errors='replace')))
    assert importers, 'no file imports tensorrt: the pattern is broken'
    assert 'boq_vpr/backends/tensorrt_backend.py' in importers
    missing = [f for f in importers if f not in checker.TENSORRT_FILES]
    assert not missing, f'files that import tensorrt but are not type-checked: {missing}'


def test_backend_imports_tensorrt_typed_not_as_a_parameter():
    """The backend's TensorRT calls go through a typed module the checker sees, not an untyped ``trt`` argument."""
    source = (ROOT / 'boq_vpr/backends/tensorrt_backend.py').read_text()
    assert 'if TYPE_CHECKING:' in source and 'import tensorrt as trt' in source
    assert not re.search(r'def \w+\([^)]*\btrt\b\s*[,)]', source), 'a function takes trt as an untyped parameter'


@pytest.mark.parametrize('line,expected,changes', [
    ('    def f(self, in: list[int], out: list[int]) -> int:\n',
     '    def f(self, in_: list[int], out: list[int]) -> int:\n', 1),
    ('    def g(self, a: int, b: int = None, c: int) -> None:\n',
     '    def g(self, a: int, b: int = None, c: int = ...) -> None:\n', 1),
    ('    def h(self, a: dict[str, int] = {}, *args, **kw) -> None:\n',
     '    def h(self, a: dict[str, int] = {}, *args, **kw) -> None:\n', 0),
])
def test_stub_def_lines_are_repaired(line, expected, changes):
    fixed, notes = checker.repair_def(line)
    assert fixed == expected and len(notes) == changes


@pytest.mark.slow
def test_mypy_passes_on_the_real_files(stubs):
    rc, out = checker.run_mypy(ROOT, list(checker.TENSORRT_FILES), stubs, CACHE)
    assert rc == 0, out


# (file, TensorRT name as written, the name changed): misspelled, and removed in TensorRT 10.
MUTATIONS = [
    ('boq_vpr/backends/tensorrt_backend.py', '.set_memory_pool_limit(', '.set_memory_pool_limits('),
    ('boq_vpr/backends/tensorrt_backend.py', '.execute_async_v3(', '.execute_async_v2('),
    ('boq_vpr/backends/tensorrt_backend.py', '.get_tensor_profile_shape(', '.get_profile_shape('),
    ('boq_vpr/backends/tensorrt_backend.py', 'trt.BuilderFlag.INT8', 'trt.BuilderFlag.INT_8'),
    ('test/test_gpu.py', '.parse_from_file(', '.parse_file('),
]


@pytest.mark.slow
@pytest.mark.parametrize('path,name,changed', MUTATIONS, ids=[m[2].strip('.(') for m in MUTATIONS])
def test_mypy_fails_on_a_changed_tensorrt_name(stubs, tmp_path, path, name, changed):
    root = _copy_repo(tmp_path / 'repo')
    target = root / path
    source = target.read_text()
    assert source.count(name) >= 1, f'{name} is not in {path}: update MUTATIONS'
    target.write_text(source.replace(name, changed, 1))
    rc, out = checker.run_mypy(root, list(checker.TENSORRT_FILES), stubs, CACHE)
    assert rc == 1, f'mypy did not fail on {changed} (exit status {rc}):\n{out}'
    bad = changed.strip('.(').split('.')[-1]
    assert re.search(rf'^{re.escape(path)}:\d+: error: .*{re.escape(bad)}', out, re.M), out


def test_command_line_reports_missing_stubs(tmp_path, capsys):
    assert checker.main(['--stubs', str(tmp_path / 'nowhere')]) == 2
    assert 'tensorrt-stubs not found' in capsys.readouterr().err
