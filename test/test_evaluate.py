"""``boq-vpr evaluate`` on bags made from the real Nordland frames.

Summer then winter over the same track, ground truth by frame index), in both modes, checked against
expectations computed here independently of the library (brute-force loops over the saved
descriptors) and against cases whose answer is known (the map queried with itself: perfect
retrieval).
"""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from boq_vpr.inputs import bags
from boq_vpr import evaluation as ev
from boq_vpr.cli import main as cli_main
from boq_vpr.evaluation import Frames, build_map
from boq_vpr.inputs.images import list_images

MODEL = ['--model', 'resnet18_1024', '--backend', 'torch', '--device', 'cpu', '--batch-size', '8']
FIRST, COUNT, TOL = 200, 40, 2
# the filters these tests look at, each on its own (calibration, consistency, keyframe selection off)
WINDOW = ['--set', 'exclusion_frames=10', '--set', 'exclusion_time_s=0', '--set', 'false_alarm_rate=0',
          '--set', 'temporal_consistency=1', '--set', 'keyframe_min_time_s=0',
          '--set', 'keyframe_max_similarity=1']


@pytest.fixture(scope='module')
def nordland_bags(heldout_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp('nordland_bags')
    subset = ['--first', str(FIRST), '--count', str(COUNT)]
    # poses of the session bag: 10 m between frames along x, the winter run on a lane 3 m aside
    pose_args = []
    for season, lane in (('summer', 0.0), ('winter', 3.0)):
        csv_path = root / f'{season}_poses.csv'
        files = list_images(heldout_dir / season)[FIRST:FIRST + COUNT]
        csv_path.write_text('file,x,y,z\n' + ''.join(f'{f.name},{10.0 * (FIRST + i)},{lane},0\n'
                                                     for i, f in enumerate(files)))
        pose_args += ['--poses', str(csv_path)]
    made = {}
    for name, folders, storage, extra in (('session', ['summer', 'winter'], 'sqlite3', pose_args),
                                          ('summer', ['summer'], 'mcap', []), ('winter', ['winter'], 'sqlite3', [])):
        out = root / name
        assert cli_main(['make-bag', *[str(heldout_dir / f) for f in folders], '--out', str(out),
                         '--storage', storage, *subset, *extra]) == 0
        made[name] = out
    return made


def _evaluate(args: list[str]) -> dict:
    assert cli_main(['evaluate', *args, *MODEL]) == 0
    out = args[args.index('--out') + 1]
    with open(f'{out}/metrics.json') as f:
        return json.load(f)


def _reference_ap(scores: np.ndarray, correct: np.ndarray, n_pos: int) -> float:
    """Average precision by the definition: sum over distinct thresholds of (recall gain) x precision."""
    ap, prev_r = 0.0, 0.0
    for t in sorted(set(scores[~np.isnan(scores)].tolist()), reverse=True):
        pred = scores >= t
        tp = int((pred & correct).sum())
        p, r = tp / int(pred.sum()), tp / n_pos
        ap += (r - prev_r) * p
        prev_r = r
    return ap


def _reference(desc_q, frames_q, desc_m, frames_m, eligible, min_score=0.0, ks=(1, 5, 10, 20)):
    """Compute the expected figures by brute force, query by query with plain loops.

    Best match, recall@k, AP and the operating point (max_candidates 1, no filters but min_score),
    query by query with plain loops.
    """
    hits = {k: 0 for k in ks}
    n_pos = 0
    scores, correct, tp, fp, fn, tn = [], [], 0, 0, 0, 0
    for i in range(len(desc_q)):
        cand = [j for j in range(len(desc_m)) if eligible(i, j)]
        pos = {j for j in cand if abs(int(frames_q[i]) - int(frames_m[j])) <= TOL}
        n_pos += bool(pos)
        if not cand:
            scores.append(np.nan)
            correct.append(False)
            tn += not pos
            fn += bool(pos)
            continue
        sims = sorted(((float(desc_q[i] @ desc_m[j]), j) for j in cand), key=lambda x: -x[0])
        for k in ks:
            hits[k] += bool(pos) and any(j in pos for _, j in sims[:k])
        best_s, best_j = sims[0]
        ok = best_j in pos
        scores.append(best_s)
        correct.append(ok)
        if best_s >= min_score:
            tp += ok
            fp += not ok
            fn += bool(pos) and not ok
        else:
            fn += bool(pos)
            tn += not pos
    scores, correct = np.array(scores), np.array(correct)
    return {'recall': {str(k): hits[k] / n_pos for k in ks}, 'ap': _reference_ap(scores, correct, n_pos),
            'tp': tp, 'fp': fp, 'fn': fn, 'tn': tn, 'n_pos': n_pos}


def test_slam_mode_on_summer_then_winter(nordland_bags, tmp_path):
    out, desc = tmp_path / 'eval', tmp_path / 'desc'
    m = _evaluate([str(nordland_bags['session']), '--out', str(out), '--save-descriptors', str(desc), *WINDOW,
                   '--gt-by', 'frame'])
    frames = Frames.load(desc / 'session.npz')
    assert len(frames) == 2 * COUNT and frames.descriptors.shape[1] == 1024
    np.testing.assert_array_equal(frames.gt.frames, list(range(FIRST, FIRST + COUNT)) * 2)
    # slam mode, exclusion window of 10 keyframes: frame i may match frames j < i - 10
    ref = _reference(frames.descriptors, frames.gt.frames, frames.descriptors, frames.gt.frames,
                     lambda i, j: j < i - 10)
    assert m['mode'] == 'slam'
    assert m['counts']['queries'] == 2 * COUNT and m['counts']['queries_with_true_match'] == ref['n_pos'] == COUNT
    for k, v in ref['recall'].items():
        assert m['recall_at_k'][k] == pytest.approx(v, abs=1e-12), k
    assert m['precision_recall']['auc_pr'] == pytest.approx(ref['ap'], abs=1e-9)
    op = m['operating_point']
    assert (op['tp'], op['fp'], op['fn'], op['tn']) == (ref['tp'], ref['fp'], ref['fn'], ref['tn'])
    assert m['setup']['random_weights'] is True and m['ground_truth']['by'] == 'frame'
    for name in ('pr_curve.png', 'loops.png', 'similarity.png', 'summary.md', 'candidates.csv'):
        assert (out / name).stat().st_size > 0, name
    lat = m['latency']
    assert lat['detect_ms']['n'] == 2 * COUNT and lat['query']['infer_ms_per_image'] > 0
    summary = (out / 'summary.md').read_text()
    assert 'weights are random' in summary and '![pr_curve](pr_curve.png)' in summary

    # ground truth from the pose topic instead: 25 m at 10 m per frame is the same as 2 frames
    out_pose = tmp_path / 'eval_pose'
    m_pose = _evaluate([str(nordland_bags['session']), '--descriptors', str(desc), '--out', str(out_pose), *WINDOW,
                        '--gt', 'topic:/ground_truth/pose', '--distance', '25'])
    assert m_pose['ground_truth']['by'] == 'position' and m_pose['ground_truth']['criterion'] == 'within 25 m'
    for key in ('counts', 'recall_at_k', 'precision_recall', 'operating_point'):
        assert m_pose[key] == m[key], key
    assert (out_pose / 'loops.png').stat().st_size > 0      # the trajectory plot with loop edges

    # geometric verification needs the images: they are read again from the bag for the saved descriptors
    out_geo = tmp_path / 'eval_geo'
    m_geo = _evaluate([str(nordland_bags['session']), '--descriptors', str(desc), '--out', str(out_geo), *WINDOW,
                       '--set', 'geometric_verification=true', '--set', 'geometric_min_inliers=8', '--no-plots'])
    import csv
    rows = list(csv.DictReader(open(out_geo / 'candidates.csv')))
    accepted = [r for r in rows if r['outcome'] == 'accepted']
    assert len(accepted) == m_geo['counts']['accepted']
    assert all(r['verified'] == 'True' and int(r['inliers']) >= 8 for r in accepted)
    # one row per processed frame, each with its outcome; rejected ones say why
    assert len({r['query_frame'] for r in rows}) == sum(m_geo['outcomes'].values()) == m_geo['counts']['frames']
    assert all(r['reason'] for r in rows if r['outcome'] != 'accepted')
    assert m_geo['outcomes']['failed_geometric'] > 0
    assert m_geo['counts']['accepted'] <= m['counts']['accepted']

    # descriptors reused: same metrics without a bag, plus a threshold sweep whose recommendation holds
    out2 = tmp_path / 'eval2'
    m2 = _evaluate(['--descriptors', str(desc), '--out', str(out2), *WINDOW, '--sweep', '--target-precision', '0.5',
                    '--sweep-consistency', '1,2', '--no-plots', '--gt-by', 'frame'])
    assert m2['recall_at_k'] == m['recall_at_k'] and m2['operating_point'] == m['operating_point']
    sweep = m2['sweep']
    assert sweep['parameter'] == 'min_score' and len(sweep['grid']) >= 4
    if sweep['recommended'] is not None:
        rec = sweep['recommended']
        m3 = _evaluate(['--descriptors', str(desc), '--out', str(tmp_path / 'eval3'), *WINDOW, '--no-plots',
                        '--gt-by', 'frame',
                        '--set', f'min_score={rec["loop_closure.min_score"]}',
                        '--set', f'temporal_consistency={rec["loop_closure.temporal_consistency"]}'])
        assert m3['operating_point']['precision'] >= 0.5
        assert m3['operating_point']['recall'] == pytest.approx(sweep['expected']['recall'])
    else:
        assert 'no setting reaches' in sweep['note']

    # calibrated: the sweep runs over false_alarm_rate and its rows are the detector's own results
    m4 = _evaluate(['--descriptors', str(desc), '--out', str(tmp_path / 'eval4'), '--set', 'exclusion_frames=10',
                    '--set', 'exclusion_time_s=0', '--set', 'keyframe_min_time_s=0',
                    '--set', 'keyframe_max_similarity=1', '--sweep',
                    '--target-precision', '0.5', '--sweep-consistency', '1,3', '--no-plots', '--gt-by', 'frame'])
    cal = m4['sweep']
    assert cal['parameter'] == 'false_alarm_rate' and len(cal['grid']) == 2 * len(ev.CALIBRATED_SWEEP)
    assert 'false-alarm' in m4['precision_recall']['score']
    row = next(r for r in cal['grid'] if r['false_alarm_rate'] == 0.01 and r['temporal_consistency'] == 3)
    assert (row['tp'], row['fp']) == (m4['operating_point']['tp'], m4['operating_point']['fp'])   # the default


def test_map_vs_queries_summer_map_winter_queries(nordland_bags, tmp_path):
    out, desc = tmp_path / 'eval', tmp_path / 'desc'
    m = _evaluate([str(nordland_bags['winter']), '--map-bag', str(nordland_bags['summer']), '--out', str(out),
                   '--save-descriptors', str(desc), '--set', 'false_alarm_rate=0', '--set', 'temporal_consistency=1'])
    q, mp = Frames.load(desc / 'query.npz'), Frames.load(desc / 'map.npz')
    ref = _reference(q.descriptors, q.gt.frames, mp.descriptors, mp.gt.frames, lambda i, j: True)
    assert m['mode'] == 'localization' and m['counts']['map_frames'] == COUNT
    assert m['counts']['queries_with_true_match'] == COUNT
    for k, v in ref['recall'].items():
        assert m['recall_at_k'][k] == pytest.approx(v, abs=1e-12), k
    assert m['precision_recall']['auc_pr'] == pytest.approx(ref['ap'], abs=1e-9)
    op = m['operating_point']
    assert (op['tp'], op['fp'], op['fn'], op['tn']) == (ref['tp'], ref['fp'], ref['fn'], ref['tn'])

    # the same map, saved and loaded (ground truth of its keyframes from the summer bag's CSV by stamp)
    map_dir = tmp_path / 'map'
    build_map(mp).save(map_dir)
    m_loaded = _evaluate(['--descriptors', str(desc), '--map', str(map_dir), '--out', str(tmp_path / 'loaded'),
                          '--map-gt', str(bags.ground_truth_sidecar(nordland_bags['summer'])), '--no-plots',
                          '--set', 'false_alarm_rate=0', '--set', 'temporal_consistency=1'])
    assert m_loaded['recall_at_k'] == m['recall_at_k']
    assert m_loaded['operating_point'] == m['operating_point']

    # known answer: the map queried with its own frames finds every frame itself
    same = tmp_path / 'same'
    same.mkdir()
    shutil.copy(desc / 'map.npz', same / 'map.npz')
    shutil.copy(desc / 'map.npz', same / 'query.npz')
    m_same = _evaluate(['--descriptors', str(same), '--out', str(tmp_path / 'same_out'),
                        '--set', 'false_alarm_rate=0', '--set', 'temporal_consistency=1'])
    assert m_same['recall_at_k'] == {'1': 1.0, '5': 1.0, '10': 1.0, '20': 1.0}
    assert m_same['precision_recall']['auc_pr'] == 1.0
    assert m_same['precision_recall']['max_recall_at_100_precision'] == 1.0
    assert m_same['operating_point']['precision'] == 1.0 and m_same['operating_point']['fp'] == 0


def test_params_file_builds_the_detector(nordland_bags, tmp_path):
    params = tmp_path / 'vpr.yaml'
    params.write_text('/**:\n  ros__parameters:\n    model.name: resnet18_1024\n'
                      '    loop_closure:\n      mode: slam\n      exclusion_frames: 12\n      exclusion_time_s: 0.0\n'
                      '      min_score: 0.5\n      top_k: 15\n')
    m = _evaluate([str(nordland_bags['session']), '--out', str(tmp_path / 'o'), '--params', str(params),
                   '--set', 'top_k=20', '--no-plots', '--max-frames', '30'])
    det = m['setup']['detector']
    assert (det['exclusion_frames'], det['min_score'], det['top_k'], det['mode']) == (12, 0.5, 20, 'slam')
    assert m['counts']['frames'] == 30
    assert m['setup']['index'] == {'type': 'flat', 'options': {}, 'source': 'default'}

    # the map index of the parameters file is the one evaluated (as the node builds it), and is reported
    hnsw = tmp_path / 'hnsw.yaml'
    hnsw.write_text(params.read_text() + '    map.index_type: hnsw\n    map.index_options.hnsw_m: 8\n'
                    '    map.index_options.nlist: 64\n')
    m_h = _evaluate([str(nordland_bags['session']), '--out', str(tmp_path / 'h'), '--params', str(hnsw),
                     '--no-plots', '--max-frames', '30'])
    assert m_h['setup']['index'] == {'type': 'hnsw', 'options': {'hnsw_m': 8}, 'source': 'parameters file'}
    assert 'map index: hnsw (hnsw_m=8), from the parameters file' in (tmp_path / 'h' / 'summary.md').read_text()
    m_c = _evaluate([str(nordland_bags['session']), '--out', str(tmp_path / 'c'), '--params', str(hnsw),
                     '--index-type', 'fp16', '--no-plots', '--max-frames', '30'])
    assert m_c['setup']['index'] == {'type': 'fp16', 'options': {}, 'source': 'command line'}
    bad = tmp_path / 'bad.yaml'
    bad.write_text('/**:\n  ros__parameters:\n    loop_closure.min_scor: 0.5\n')
    assert cli_main(['evaluate', str(nordland_bags['session']), '--out', str(tmp_path / 'x'), '--params', str(bad),
                     *MODEL]) == 2


def test_without_ground_truth_metrics_are_skipped_with_a_warning(nordland_bags, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger='boq_vpr.evaluation'):
        m = _evaluate([str(nordland_bags['session']), '--out', str(tmp_path / 'o'), '--gt', 'none', *WINDOW,
                       '--max-frames', '20'])
    assert 'no ground truth' in caplog.text
    assert m['ground_truth'] is None and 'recall_at_k' not in m and 'precision_recall' not in m
    assert set(m['skipped']) == {'recall_at_k', 'precision_recall', 'operating_point'}
    assert m['counts']['queries'] == 20 and (tmp_path / 'o' / 'similarity.png').exists()


def test_bad_input_gives_clear_errors(nordland_bags, tmp_path, capsys):
    rc = cli_main(['evaluate', str(nordland_bags['session']), '--topic', '/camera/nope', '--out', str(tmp_path / 'o'),
                   *MODEL])
    err = capsys.readouterr().err
    assert rc == 2 and '/camera/nope' in err and '/camera/image_raw (sensor_msgs/msg/Image, 80 messages)' in err
    broken = tmp_path / 'broken'
    shutil.copytree(nordland_bags['session'], broken)
    db3 = next(broken.glob('*.db3'))
    db3.write_bytes(db3.read_bytes()[:30000])
    rc = cli_main(['evaluate', str(broken), '--out', str(tmp_path / 'o2'), *MODEL])
    err = capsys.readouterr().err
    assert rc == 2 and str(broken) in err and 'truncated' in err


def test_stamps_out_of_order_are_reordered_and_reported(nordland_bags, tmp_path):
    frames = [im for im in bags.iter_images(nordland_bags['session'])][::8]    # 10 frames, 5 per season
    stamps = [im.stamp_ns for im in frames]
    order = [0, 2, 1, 3, 4, 6, 5, 7, 9, 8]          # bag order differs from stamp order three times
    shuffled, ordered = tmp_path / 'shuffled', tmp_path / 'ordered'
    for path, idx in ((shuffled, order), (ordered, range(len(frames)))):
        with bags.BagWriter(path, 'mcap') as w:
            for n, i in enumerate(idx):
                _, msg = w.image_message(frames[i].rgb, stamps[i])
                w.write('/camera/image_raw', bags.RAW_IMAGE, stamps[0] + n, msg)
        # ground truth: summer and winter frames at the same place share the frame index
        from boq_vpr.inputs.ground_truth import write_table
        write_table(bags.ground_truth_sidecar(path), stamps, frames=[k % 5 for k in range(10)])
    args = ['--set', 'exclusion_frames=2', '--set', 'exclusion_time_s=0', '--frame-tolerance', '0', '--no-plots']
    m1 = _evaluate([str(shuffled), '--out', str(tmp_path / 'o1'), *args])
    m2 = _evaluate([str(ordered), '--out', str(tmp_path / 'o2'), *args])
    assert m1['input']['session']['out_of_order_stamps'] == 3
    assert m1['input']['session']['reordered_to_stamp_order'] is True
    assert m2['input']['session']['out_of_order_stamps'] == 0
    for key in ('counts', 'recall_at_k', 'operating_point', 'precision_recall'):
        assert m1[key] == m2[key], key
    assert 'out of order' in (tmp_path / 'o1' / 'summary.md').read_text()
