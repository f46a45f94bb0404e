"""``./boq.sh demo`` end to end on a short slice of the shipped held-out Nordland section.

Bag written, shipped model and config/vpr.yaml, loop closures counted and scored, plots written;
also from a copy of the repository with no ``../shared`` beside it, as a user's clone is.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from boq_vpr import demo

ROOT = Path(__file__).resolve().parents[1]
LOOPS_LINE = r'loop closures accepted (\d+): (\d+) true, (\d+) false'


def _check_metrics(m: dict, text: str, frames: int) -> None:
    assert m['setup']['model'] == 'resnet18_nordland' and not m['setup']['random_weights']
    assert m['counts']['frames'] == 2 * frames                  # summer then winter
    op = m['operating_point']
    line = re.search(LOOPS_LINE, text)
    assert line, text
    assert [int(g) for g in line.groups()] == [op['predicted'], op['tp'], op['fp']]
    # every winter keyframe revisits a summer place (the novelty filter skips frames that look unchanged)
    assert 0 < op['positives'] == m['counts']['queries_with_true_match'] <= frames
    assert sum(m['outcomes'].values()) == 2 * frames and m['outcomes']['accepted'] == op['predicted']
    assert 'R@1' in text and f'{m["recall_at_k"]["1"]:.3f}' in text


def test_demo_runs_end_to_end_on_a_slice(heldout_dir, tmp_path, capsys):
    out = tmp_path / 'demo'
    assert demo.main(['--out', str(out), '--count', '80']) == 0    # default data: the shipped section
    text = capsys.readouterr().out
    cwd = Path.cwd().resolve()
    shown = heldout_dir.relative_to(cwd) if heldout_dir.is_relative_to(cwd) else heldout_dir
    assert f'{shown / "summer"} then {shown / "winter"}, from image 0' in text
    m = json.loads((out / 'eval' / 'metrics.json').read_text())
    assert m['setup']['params_file'].endswith('config/vpr.yaml')
    _check_metrics(m, text, 80)
    for fig in m['figures']:
        assert (out / 'eval' / fig).stat().st_size > 1000
    assert len(m['figures']) >= 3
    # a second run reuses the bag
    assert demo.main(['--data', str(heldout_dir), '--out', str(out), '--count', '80']) == 0
    assert 'reusing' in capsys.readouterr().out


def test_demo_starts_at_the_held_out_frames_of_the_whole_set(heldout_dir, tmp_path):
    """The demo starts at the held-out section in every folder that holds it.

    In the shipped copy the held-out section starts at image 0; in a folder holding the whole
    trimmed set at image 2400, so ``--data`` with the whole set runs the same frames; other folders
    start at 0.
    """
    assert demo.first_held_out(heldout_dir / 'summer') == 0
    whole = tmp_path / 'whole'
    whole.mkdir()
    for i in range(3):                   # stand-ins for frames 0-2 of the whole set, then frame 2400
        (whole / f'images-{(i + 1) * 10:05d}.png').write_bytes(b'')
    shutil.copy(heldout_dir / 'summer' / 'images-24010.png', whole)
    assert demo.first_held_out(whole) == 3
    other = tmp_path / 'other'
    other.mkdir()
    shutil.copy(heldout_dir / 'summer' / 'images-24020.png', other / 'a.png')
    assert demo.first_held_out(other) == 0


def _repository_files() -> list[str]:
    """List what a clone holds: the tracked files, and those about to be (untracked, not ignored)."""
    try:
        out = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=ROOT,
                             capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f'not a git checkout, or no git ({err}): cannot tell which files a clone has')
    return [f for f in out.stdout.decode().split('\0') if f and (ROOT / f).is_file()]


@pytest.mark.slow
def test_demo_runs_from_a_fresh_clone_without_shared(tmp_path):
    clone = tmp_path / 'clone' / 'boq_vpr'
    for rel in _repository_files():
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, clone / rel)
    assert not (clone.parent / 'shared').exists()
    env = {k: v for k, v in os.environ.items() if k != 'BOQ_VPR_SHARED'}
    env['PYTHONPATH'] = str(clone)
    run = subprocess.run([sys.executable, '-m', 'boq_vpr.demo', '--count', '80'], cwd=clone, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    text = run.stdout
    data = Path('boq_vpr') / 'data' / 'nordland_heldout'
    assert f'{data / "summer"} then {data / "winter"}, from image 0 of each, 80 frames each' in text, text
    # the clone's own copy was read
    files = (clone / 'out' / 'demo' / 'bag' / 'ground_truth.csv').read_text().splitlines()[1:]
    assert len(files) == 160, files[:2]
    assert all(f.split(',')[-1].startswith(str((clone / data).resolve())) for f in files), files[:2]
    out = clone / 'out' / 'demo' / 'eval'
    m = json.loads((out / 'metrics.json').read_text())
    assert Path(m['setup']['params_file']).resolve() == (clone / 'config' / 'vpr.yaml').resolve()
    _check_metrics(m, text, 80)
    assert 'precision' in text and 'recall' in text
    assert len(m['figures']) >= 3 and all((out / fig).stat().st_size > 1000 for fig in m['figures'])
