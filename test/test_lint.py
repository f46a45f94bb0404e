"""The code passes the linter configured in ruff.toml (pycodestyle, pyflakes, pep257 docstrings)."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    beside = Path(sys.executable).with_name('ruff')
    if beside.exists():
        return [str(beside)]
    found = shutil.which('ruff')
    assert found, 'ruff is not installed: pip install -e .[test]'
    return [found]


def test_the_repository_passes_ruff():
    proc = subprocess.run(_ruff() + ['check', '--no-cache', '--output-format', 'concise', str(ROOT)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f'ruff check found problems:\n{proc.stdout[-6000:]}{proc.stderr[-2000:]}'


def test_the_linter_reads_the_repository_configuration():
    # a line longer than the stated limit must be reported, so the check is live
    proc = subprocess.run(_ruff() + ['check', '--no-cache', '--stdin-filename', str(ROOT / 'boq_vpr' / 'x.py'),
                                     '-'], cwd=ROOT, input='X = "' + 'a' * 130 + '"\n',
                          capture_output=True, text=True)
    assert proc.returncode == 1 and 'E501' in proc.stdout, proc.stdout + proc.stderr
