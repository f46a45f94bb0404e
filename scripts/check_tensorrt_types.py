#!/usr/bin/env python3
"""Static TensorRT API check: type-check the code that calls TensorRT with mypy against tensorrt-stubs.

TensorRT cannot be installed on the machines that run CI (no GPU; the PyPI packages fetch NVIDIA's
libraries at install time), so nothing there executes a TensorRT call. ``tensorrt-stubs`` carries
the TensorRT 10 Python API as type stubs: with them, mypy finds a misspelled or removed TensorRT
name, a wrong argument count or type, without a GPU.

    python scripts/check_tensorrt_types.py                 # the files in TENSORRT_FILES, exit status of mypy
    python scripts/check_tensorrt_types.py --root COPY     # the same files in another copy of the repository
    python scripts/check_tensorrt_types.py --list          # what would be checked, and with which stubs

The stubs: ``BOQ_VPR_TRT_STUBS`` or ``--stubs DIR``, else ``<venv>/trt-stubs`` (where ``./boq.sh`` puts
them: ``pip install --no-deps --target <venv>/trt-stubs tensorrt-stubs==10.13.0.35.1``; kept out of
site-packages, where their ``tensorrt/`` folder of .pyi files would import as an empty ``tensorrt``
package), else an installed ``tensorrt-stubs`` distribution. tensorrt-stubs 10.13.0.35.1 has ``def``
lines that Python cannot parse (plugin parameters named ``in``, a keyword; ``add_scale_nd`` with a
parameter without default after defaulted ones): a copy with those lines repaired is made once in
the cache folder (its PATCHED file lists the repairs) and used instead. mypy settings: the ``[mypy]``
section of setup.cfg.

Exit status: mypy's (0: no errors), 2 where mypy or the stubs are missing or unusable.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUBS_ENV = 'BOQ_VPR_TRT_STUBS'
STUBS_PIN = 'tensorrt-stubs==10.13.0.35.1'
# Every file of the repository that calls the TensorRT API (test_trt_static.py checks that this list
# holds every file that imports tensorrt).
TENSORRT_FILES = (
    'boq_vpr/backends/tensorrt_backend.py',
    'boq_vpr/backends/engine_cache.py',
    'boq_vpr/commands/export.py',
    'test/test_gpu.py',
)
STUB_PACKAGES = ('tensorrt', 'tensorrt_bindings')
# a parameter named after a keyword in a def line: "(self, in: ...", ", in: ..."
_KEYWORD_PARAM = re.compile(r'(?<=[(,\s])(in|from|is|lambda|pass|class|def|global|import|with|as|async|await)'
                            r'(?=\s*:)')


class StubsError(RuntimeError):
    """mypy or usable TensorRT stubs are missing."""


def find_stubs(explicit: str | None = None) -> Path:
    """Return the folder holding ``tensorrt/__init__.pyi`` (and ``tensorrt_bindings/``)."""
    candidates = []
    if explicit:
        candidates.append(Path(explicit))
    elif os.environ.get(STUBS_ENV):
        candidates.append(Path(os.environ[STUBS_ENV]))
    else:
        candidates.append(Path(sys.prefix) / 'trt-stubs')
        try:
            from importlib import metadata
            dist = metadata.distribution('tensorrt-stubs')
            candidates.append(Path(str(dist.locate_file(''))))
        except Exception:  # not installed as a distribution
            pass
    for folder in candidates:
        if (folder / 'tensorrt' / '__init__.pyi').is_file():
            return folder
    raise StubsError(f'tensorrt-stubs not found (looked in {", ".join(map(str, candidates))}); install them with '
                     f'pip install --no-deps --target {Path(sys.prefix) / "trt-stubs"} {STUBS_PIN} '
                     f'(./boq.sh does), or set {STUBS_ENV}')


def stubs_version(folder: Path) -> str:
    text = (folder / 'tensorrt' / '__init__.pyi').read_text()
    m = re.search(r"^__version__: str = '([^']+)'", text, re.M)
    return m.group(1) if m else 'unknown'


def _split_params(text: str) -> list[str]:
    """Top-level comma-separated parts of a parameter list."""
    parts, depth, cur = [], 0, ''
    for ch in text:
        if ch in '([{':
            depth += 1
        elif ch in ')]}':
            depth -= 1
        if ch == ',' and depth == 0:
            parts.append(cur)
            cur = ''
        else:
            cur += ch
    parts.append(cur)
    return parts


def repair_def(line: str) -> tuple[str, list[str]]:
    """Repair a stub ``def`` line that Python cannot parse, where the fault is known.

    The known faults: a parameter named after a keyword (renamed with a trailing ``_``), a parameter
    without a default after one with a default (given ``= ...``). Returns the line and what was changed.
    """
    indent = line[:len(line) - len(line.lstrip())]
    body = line.strip()
    def parses(text: str) -> bool:
        try:
            ast.parse(text.strip() + ' ...', feature_version=(3, 10))
            return True
        except SyntaxError:
            return False
    if parses(body):
        return line, []
    changes = []
    fixed, n = _KEYWORD_PARAM.subn(lambda m: m.group(1) + '_', body)
    if n:
        changes.append(f'{n} keyword parameter name(s)')
    if not parses(fixed):
        m = re.match(r'(def \w+\()(.*)(\)\s*(->.*)?:)$', fixed)
        if m:
            params, seen_default, added = [], False, 0
            for part in _split_params(m.group(2)):
                name = part.strip()
                if '=' in part:
                    seen_default = True
                elif seen_default and name and not name.startswith('*') and name != '/':
                    part += ' = ...'
                    added += 1
                params.append(part)
            fixed = m.group(1) + ','.join(params) + m.group(3)
            if added:
                changes.append(f'{added} default(s) after a defaulted parameter')
    newline = '\n' if line.endswith('\n') else ''
    return indent + fixed + newline, changes


def patched_stubs(folder: Path, cache: Path) -> Path:
    """Copy the stub packages with the ``def`` lines that do not parse repaired (``repair_def``).

    Every file is checked to parse. The copy is reused while the source stubs are unchanged.
    """
    files = sorted(p for pkg in STUB_PACKAGES for p in (folder / pkg).rglob('*.pyi'))
    if not files:
        raise StubsError(f'{folder}: no .pyi files in {STUB_PACKAGES}')
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(folder)).encode())
        h.update(p.read_bytes())
    out = cache / f'trt-stubs-{h.hexdigest()[:12]}'
    if (out / 'tensorrt' / '__init__.pyi').is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix='.trt-stubs-'))
    notes = []
    for p in files:
        lines = []
        for i, line in enumerate(p.read_text().splitlines(keepends=True), 1):
            if line.lstrip().startswith('def '):
                line, changes = repair_def(line)
                notes += [f'{p.relative_to(folder)}:{i}: {c}' for c in changes]
            lines.append(line)
        text = ''.join(lines)
        try:
            ast.parse(text, filename=str(p), feature_version=(3, 10))
        except SyntaxError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StubsError(f'{p}: does not parse even after repairing its def lines: {err}') from err
        target = tmp / p.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    (tmp / 'PATCHED').write_text(f'copied from {folder}; repaired:\n' + '\n'.join(notes) + '\n')
    try:
        tmp.rename(out)
    except OSError:       # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def run_mypy(root: Path, files: list[str], stubs: Path, cache: Path, config: Path | None = None) -> tuple[int, str]:
    """Mypy over ``files`` (relative to ``root``) with the stubs on MYPYPATH; (exit status, output)."""
    try:
        import mypy  # noqa: F401
    except ImportError as err:
        raise StubsError('mypy is not installed (pip install mypy; it is in the "test" extra)') from err
    config = config or (root / 'setup.cfg')
    env = dict(os.environ, MYPYPATH=str(stubs))
    cmd = [sys.executable, '-m', 'mypy', '--config-file', str(config), '--cache-dir', str(cache / 'mypy'),
           '--no-error-summary', '--hide-error-context', *files]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('files', nargs='*', help=f'files relative to --root (default: {" ".join(TENSORRT_FILES)})')
    parser.add_argument('--root', type=Path, default=ROOT, help='repository copy to check (default: this one)')
    parser.add_argument('--stubs', default=None, help=f'folder holding tensorrt/__init__.pyi (default: ${STUBS_ENV}, '
                                                      '<venv>/trt-stubs, or the installed tensorrt-stubs)')
    parser.add_argument('--cache', type=Path, default=ROOT / '.mypy_cache' / 'boq_vpr',
                        help='patched stubs and the mypy cache (default: .mypy_cache/boq_vpr)')
    parser.add_argument('--config', type=Path, default=None, help='mypy configuration (default: ROOT/setup.cfg)')
    parser.add_argument('--list', action='store_true', help='print the files and stubs, check nothing')
    args = parser.parse_args(argv)
    files = args.files or list(TENSORRT_FILES)
    try:
        stubs = find_stubs(args.stubs)
        print(f'tensorrt-stubs {stubs_version(stubs)} from {stubs}')
        if args.list:
            print('\n'.join(files))
            return 0
        args.cache.mkdir(parents=True, exist_ok=True)
        patched = patched_stubs(stubs, args.cache)
        rc, out = run_mypy(args.root.resolve(), files, patched, args.cache, args.config)
    except StubsError as err:
        print(f'check_tensorrt_types: {err}', file=sys.stderr)
        return 2
    print(out, end='')
    print(f'mypy over {len(files)} files against TensorRT {stubs_version(stubs)} stubs: '
          + ('no errors' if rc == 0 else f'FAILED (exit status {rc})'))
    return rc


if __name__ == '__main__':
    sys.exit(main())
