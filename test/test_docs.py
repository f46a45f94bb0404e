"""The user guide and its reference.

README.md stays short and every link from it (and from docs/) resolves inside the repository;
docs/parameters.md and config/vpr.yaml are what the node's parameter declarations give; the project
speaks of itself, not of how it was developed.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from boq_vpr.ros import parameters
from boq_vpr.ros.parameters import ParamSpec, parameters_markdown, stale_generated

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 350
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')


def _docs() -> list[Path]:
    return [ROOT / 'README.md', ROOT / 'CHANGELOG.md', *sorted((ROOT / 'docs').rglob('*.md'))]


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of the headings of a Markdown file."""
    out = set()
    for line in path.read_text(encoding='utf-8').splitlines():
        m = re.match(r'^#{1,6}\s+(.*?)\s*#*\s*$', line)
        if m:
            text = re.sub(r'[^\w\- ]', '', m.group(1).lower().replace('`', ''))
            out.add(text.replace(' ', '-'))
    return out


def _strip_code(text: str) -> str:
    """Markdown without fenced code blocks and inline code (links there are not links)."""
    text = re.sub(r'^```.*?^```', '', text, flags=re.S | re.M)
    return re.sub(r'`[^`\n]*`', '', text)


def test_readme_is_a_short_guide():
    lines = (ROOT / 'README.md').read_text(encoding='utf-8').splitlines()
    assert len(lines) <= README_MAX_LINES, f'README.md has {len(lines)} lines; move reference material to docs/'


@pytest.mark.parametrize('doc', _docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_to_a_file_of_the_repository(doc):
    if not doc.exists():
        pytest.skip(f'{doc.name} absent')
    bad = []
    for target in LINK.findall(_strip_code(doc.read_text(encoding='utf-8'))):
        if re.match(r'^[a-z]+:', target):            # https:, mailto: ... (not checked here)
            continue
        rel, _, anchor = target.partition('#')
        path = (doc.parent / rel).resolve() if rel else doc
        if not path.is_relative_to(ROOT) or not path.exists():
            bad.append(f'{target}: no such file in the repository')
        elif anchor and path.suffix == '.md' and anchor not in _anchors(path):
            bad.append(f'{target}: no heading #{anchor} in {path.relative_to(ROOT)}')
    assert not bad, f'{doc.relative_to(ROOT)}: ' + '; '.join(bad)


def test_readme_links_the_reference():
    text = (ROOT / 'README.md').read_text(encoding='utf-8')
    for doc in ('docs/parameters.md', 'CHANGELOG.md'):
        assert f']({doc}' in text, doc


def test_parameter_reference_and_params_file_are_generated_from_the_declarations():
    stale = stale_generated(ROOT)
    assert not stale, f'{", ".join(stale)} differ from the parameter declarations: ' \
                      'run python -m boq_vpr.ros.parameters --write'


def test_a_parameter_added_in_code_makes_both_files_stale(monkeypatch):
    declared = parameters._node_parameters
    monkeypatch.setattr(parameters, '_node_parameters',
                        lambda: declared() + [ParamSpec('odom_extra_delay_sec', 0.5, 'a new parameter',
                                                        range=(0.0, 1.0))])
    assert sorted(stale_generated(ROOT)) == ['config/vpr.yaml', 'docs/parameters.md']
    row = [line for line in parameters_markdown().splitlines() if line.startswith('| `odom_extra_delay_sec`')]
    assert row == ['| `odom_extra_delay_sec` | float | `0.5` | [0.0, 1.0] |  | a new parameter |']


def test_the_parameter_command_checks_and_writes(tmp_path, capsys):
    (tmp_path / 'config').mkdir()
    assert parameters.main(['--check', '--root', str(tmp_path)]) == 1
    assert 'config/vpr.yaml is not current' in capsys.readouterr().err
    assert parameters.main(['--write', '--root', str(tmp_path)]) == 0
    assert parameters.main(['--check', '--root', str(tmp_path)]) == 0
    assert (tmp_path / 'docs' / 'parameters.md').read_text() == (ROOT / 'docs' / 'parameters.md').read_text()
    assert parameters.main(['--check', '--root', str(tmp_path / 'nowhere')]) == 2


# How the work on the project was organized is not the project: no issue numbers, commit ids or
# words about who developed it and with what, in what users and readers see.
DEVELOPMENT_WORDS = re.compile(r'\bissue\s*#?\d+|\bdefects?\s+\d+|\bcommits?\s+[0-9a-f]{7,40}\b|\blent\b'
                               r'|\bsessions? that wrote\b|\bwrote this\b', re.I)


def _project_text_files() -> list[Path]:
    globs = ['README.md', 'CHANGELOG.md', 'docs/**/*.md', 'boq_vpr/**/*.py', 'boq_vpr/**/*.md', 'test/*.py',
             'scripts/*', 'training/**/*.py', 'training/**/*.yaml', 'launch/*', 'config/*', 'bench/*.json',
             'boq.sh', '.ci/run', 'setup.py', 'setup.cfg', 'package.xml']
    files = {p for g in globs for p in ROOT.glob(g) if p.is_file()}
    return sorted(files - {Path(__file__).resolve()})


def test_the_project_speaks_of_itself_only():
    hits = []
    for path in _project_text_files():
        for n, line in enumerate(path.read_text(encoding='utf-8', errors='replace').splitlines(), 1):
            if DEVELOPMENT_WORDS.search(line):
                hits.append(f'{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}')
    assert not hits, 'development history in the product:\n' + '\n'.join(hits)
