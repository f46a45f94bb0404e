"""``./boq.sh demo`` end to end on a short slice of the held-out Nordland section: bag written,
shipped model and config/vpr.yaml, loop closures counted and scored, plots written."""
from __future__ import annotations

import json
import re

from boq_vpr import demo


def test_demo_runs_end_to_end_on_a_slice(nordland_dir, tmp_path, capsys):
    out = tmp_path / 'demo'
    assert demo.main(['--data', str(nordland_dir), '--out', str(out), '--count', '80']) == 0
    text = capsys.readouterr().out
    m = json.loads((out / 'eval' / 'metrics.json').read_text())
    assert m['setup']['model'] == 'resnet18_nordland' and not m['setup']['random_weights']
    assert m['setup']['params_file'].endswith('config/vpr.yaml')
    assert m['counts']['frames'] == 160                       # 80 summer + 80 winter frames
    op = m['operating_point']
    line = re.search(r'loop closures accepted (\d+): (\d+) true, (\d+) false', text)
    assert line, text
    assert [int(g) for g in line.groups()] == [op['predicted'], op['tp'], op['fp']]
    # every winter keyframe revisits a summer place (the novelty filter skips frames that look unchanged)
    assert 0 < op['positives'] == m['counts']['queries_with_true_match'] <= 80
    assert sum(m['outcomes'].values()) == 160 and m['outcomes']['accepted'] == op['predicted']
    assert 'R@1' in text and f'{m["recall_at_k"]["1"]:.3f}' in text
    for fig in m['figures']:
        assert (out / 'eval' / fig).stat().st_size > 1000
    assert len(m['figures']) >= 3
    # a second run reuses the bag
    assert demo.main(['--data', str(nordland_dir), '--out', str(out), '--count', '80']) == 0
    assert 'reusing' in capsys.readouterr().out
