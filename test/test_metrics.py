"""Metrics and ground truth on cases whose answer is known by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from boq_vpr.inputs import ground_truth as gt
from boq_vpr.evaluation import metrics as m
from boq_vpr.errors import DatasetError


# ---------------------------------------------------------------- recall@k

def test_recall_perfect_retrieval():
    positives = np.eye(4, dtype=bool)
    ranked = np.array([[0, 1, 2], [1, 0, 2], [2, 3, 0], [3, 2, 1]])
    hits = m.retrieval_hits(ranked, positives)
    assert hits[:, 0].all() and not hits[:, 1:].any()
    assert m.recall_at_k(hits, positives.any(1), ks=(1, 2, 3)) == {1: 1.0, 2: 1.0, 3: 1.0}


def test_recall_all_wrong():
    positives = np.eye(3, dtype=bool)
    ranked = np.array([[1, 2], [2, 0], [0, 1]])
    hits = m.retrieval_hits(ranked, positives)
    assert not hits.any()
    assert m.recall_at_k(hits, positives.any(1), ks=(1, 2)) == {1: 0.0, 2: 0.0}


def test_recall_at_k_counts_rank_and_skips_queries_without_match():
    # query 0: hit at rank 1; query 1: hit at rank 3; query 2: no hit in top 3; query 3: no true match
    positives = np.zeros((4, 6), bool)
    positives[0, 5] = True
    positives[1, [3, 4]] = True
    positives[2, 0] = True
    ranked = np.array([[5, 1, 2], [0, 1, 4], [1, 2, 3], [0, 1, 2]])
    hits = m.retrieval_hits(ranked, positives)
    r = m.recall_at_k(hits, positives.any(1), ks=(1, 2, 3, 20))
    assert r == {1: pytest.approx(1 / 3), 2: pytest.approx(1 / 3), 3: pytest.approx(2 / 3), 20: pytest.approx(2 / 3)}


def test_recall_padding_and_no_positive_at_all():
    positives = np.zeros((2, 3), bool)
    ranked = np.array([[0, -1], [-1, -1]])
    hits = m.retrieval_hits(ranked, positives)
    assert not hits.any()
    assert all(math.isnan(v) for v in m.recall_at_k(hits, positives.any(1), ks=(1, 5)).values())


def test_recall_shapes_are_checked():
    with pytest.raises(AssertionError):
        m.recall_at_k(np.zeros((3, 2), bool), np.zeros(2, bool))
    with pytest.raises(AssertionError):
        m.retrieval_hits(np.array([[3]]), np.zeros((1, 3), bool))


# ---------------------------------------------------------------- PR curve

def test_pr_perfect_detector():
    scores = np.array([0.9, 0.8, 0.7, 0.2])
    correct = np.array([True, True, True, False])
    has_pos = np.array([True, True, True, False])   # the low-scoring query has no true match
    curve = m.precision_recall_curve(scores, correct, has_pos)
    np.testing.assert_allclose(curve.precision, [1, 1, 1, 0.75])
    np.testing.assert_allclose(curve.recall, [1 / 3, 2 / 3, 1, 1])
    assert m.average_precision(curve) == pytest.approx(1.0)
    assert m.max_recall_at_precision(curve) == (pytest.approx(1.0), pytest.approx(0.7))
    f1 = m.f1_max(curve)
    assert f1['f1'] == pytest.approx(1.0) and f1['threshold'] == pytest.approx(0.7)


def test_pr_all_wrong():
    scores = np.array([0.9, 0.5, 0.1])
    correct = np.zeros(3, bool)
    has_pos = np.ones(3, bool)
    curve = m.precision_recall_curve(scores, correct, has_pos)
    assert (curve.precision == 0).all() and (curve.recall == 0).all()
    assert m.average_precision(curve) == 0.0
    assert m.max_recall_at_precision(curve) == (0.0, None)
    assert m.f1_max(curve)['f1'] == 0.0


def test_pr_ties_enter_together():
    # two predictions tied at 0.9, one right one wrong: no point may claim precision 1 at recall 0.5
    scores = np.array([0.9, 0.9, 0.5])
    correct = np.array([True, False, True])
    has_pos = np.array([True, True, True])
    curve = m.precision_recall_curve(scores, correct, has_pos)
    np.testing.assert_allclose(curve.thresholds, [0.9, 0.5])
    np.testing.assert_allclose(curve.precision, [0.5, 2 / 3])
    np.testing.assert_allclose(curve.recall, [1 / 3, 2 / 3])
    # AP by hand: 1/3 * 1/2 + 1/3 * 2/3 = 7/18
    assert m.average_precision(curve) == pytest.approx(7 / 18)
    assert m.max_recall_at_precision(curve) == (0.0, None)
    # the reverse order of the tied pair gives the same curve
    curve2 = m.precision_recall_curve(scores, correct[[1, 0, 2]], has_pos)
    np.testing.assert_allclose(curve2.precision, curve.precision)


def test_pr_queries_without_true_match_and_without_prediction():
    # q0 correct (0.8), q1 has no true match but predicts (0.6) -> FP, q2 has a match but no
    # prediction (NaN) -> never recalled, q3 correct (0.4)
    scores = np.array([0.8, 0.6, np.nan, 0.4])
    correct = np.array([True, False, False, True])
    has_pos = np.array([True, False, True, True])
    curve = m.precision_recall_curve(scores, correct, has_pos)
    assert curve.positives == 3
    np.testing.assert_allclose(curve.precision, [1, 0.5, 2 / 3])
    np.testing.assert_allclose(curve.recall, [1 / 3, 1 / 3, 2 / 3])
    # AP: 1/3 * 1 + 0 * 0.5 + 1/3 * 2/3 = 5/9
    assert m.average_precision(curve) == pytest.approx(5 / 9)
    assert m.max_recall_at_precision(curve) == (pytest.approx(1 / 3), pytest.approx(0.8))
    f1 = m.f1_max(curve)  # points: (1, 1/3) F1 0.5; (0.5, 1/3) 0.4; (2/3, 2/3) 2/3
    assert f1['f1'] == pytest.approx(2 / 3) and f1['threshold'] == pytest.approx(0.4)


def test_pr_consistency_is_asserted():
    with pytest.raises(AssertionError):  # correct without prediction
        m.precision_recall_curve(np.array([np.nan]), np.array([True]), np.array([True]))
    with pytest.raises(AssertionError):  # correct on a query without true match
        m.precision_recall_curve(np.array([0.5]), np.array([True]), np.array([False]))


def test_pr_no_positives_gives_nan():
    curve = m.precision_recall_curve(np.array([0.5, 0.2]), np.zeros(2, bool), np.zeros(2, bool))
    assert math.isnan(m.average_precision(curve))
    assert math.isnan(m.max_recall_at_precision(curve)[0])


def test_operating_point_counts():
    predicted = np.array([True, True, True, False, False])
    correct = np.array([True, False, False, False, False])
    has_pos = np.array([True, True, False, True, False])
    op = m.operating_point(predicted, correct, has_pos)
    assert (op['tp'], op['fp'], op['fn'], op['tn']) == (1, 2, 2, 1)
    assert op['precision'] == pytest.approx(1 / 3) and op['recall'] == pytest.approx(1 / 3)
    assert op['f1'] == pytest.approx(1 / 3)


# ---------------------------------------------------------------- ground truth

def test_positive_matrix_by_distance_and_by_frame():
    q = gt.GroundTruth(np.array([[0, 0, 0], [100, 0, 0], [np.nan, np.nan, np.nan]]), np.array([0, 10, -1]))
    ref = gt.GroundTruth(np.array([[10, 0, 0], [30, 0, 0], [90, 5, 0]]), np.array([1, 3, 10]))
    pos = gt.positive_matrix(q, ref, gt.Criterion(distance_m=25.0))
    np.testing.assert_array_equal(pos, [[True, False, False], [False, False, True], [False, False, False]])
    pos = gt.positive_matrix(q, ref, gt.Criterion(frame_tolerance=1, by='frame'))
    np.testing.assert_array_equal(pos, [[True, False, False], [False, False, True], [False, False, False]])
    pos = gt.positive_matrix(q, ref, gt.Criterion(frame_tolerance=3, by='frame'))
    np.testing.assert_array_equal(pos[0], [True, True, False])
    assert gt.resolve_by(q, ref, gt.Criterion()) == 'position'
    assert gt.resolve_by(gt.GroundTruth(None, np.array([1])), ref, gt.Criterion()) == 'frame'
    assert gt.resolve_by(gt.GroundTruth.empty(2), ref, gt.Criterion()) is None


def test_interpolation_and_nearest_labels():
    from boq_vpr.inputs.poses import lookup_poses
    t = np.array([0, 10, 20], np.int64)
    p = np.array([[0, 0, 0], [10, 0, 0], [10, 10, 0]], float)
    out = lookup_poses(t, p, np.array([5, 10, 15, 25, 100]), max_dt_ns=10).positions
    np.testing.assert_allclose(out[:3], [[5, 0, 0], [10, 0, 0], [10, 5, 0]])
    np.testing.assert_allclose(out[3], [10, 10, 0])       # beyond the end, nearest within 10
    assert np.isnan(out[4]).all()                          # too far from any sample
    lab = gt.nearest_labels(np.array([1, 14, 16, 50]), t, np.array([7, 8, 9]), max_dt_ns=5)
    np.testing.assert_array_equal(lab, [7, 8, 9, -1])


def test_csv_and_tum_tables(tmp_path):
    path = tmp_path / 'gt.csv'
    gt.write_table(path, [1_000_000_000, 2_000_000_000], frames=[4, 5],
                   positions=np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), extra={'file': ['a.png', 'b.png']})
    table = gt.load_table(path)
    np.testing.assert_array_equal(table.frames, [4, 5])
    truth = gt.from_table(table, np.array([1_000_000_000, 1_500_000_000, 9_000_000_000]), max_dt_s=0.01)
    np.testing.assert_array_equal(truth.frames, [4, -1, -1])
    np.testing.assert_allclose(truth.positions[0], [1, 2, 3])
    assert np.isnan(truth.positions[1:]).all()   # rows 1 s apart: beyond max_dt, no interpolation
    tum = tmp_path / 'traj.txt'
    tum.write_text('# t x y z qx qy qz qw\n1.0 0 0 0 0 0 0 1\n2.0 10 0 0 0 0 0 1\n')
    truth = gt.from_csv(tum, np.array([1_500_000_000]), max_dt_s=2.0)
    np.testing.assert_allclose(truth.positions, [[5, 0, 0]])
    bad = tmp_path / 'bad.csv'
    bad.write_text('time_of_day,x,y\n1,2,3\n')
    with pytest.raises(Exception, match='no stamp column'):
        gt.load_table(bad)


@pytest.mark.parametrize('text,message', [
    ('timestamp,x,y,z\n1700000000123456789,1,2,3\n', r'not a time in seconds .nanoseconds\? name that column stamp_ns'),
    ('stamp,x,y,z,\n1.0,1,2,3,\n2.0,1,2\n', r'bad\.csv:3: column z: the value is missing'),
    ('stamp,x,y\n1.0,one,2\n', r"bad\.csv:2: column x: 'one' is not a number"),
    ('1.0 0 0 0\n2.0 0 0 0 0 0 0 1\n', r'line 2 has 8 values, line 1 has 4'),
    ('1700000000123456789 0 0 0\n', r'not a time in seconds'),
])
def test_malformed_ground_truth_files_are_refused_naming_file_and_line(tmp_path, text, message):
    bad = tmp_path / 'bad.csv'
    bad.write_text(text)
    with pytest.raises(DatasetError, match=message):
        gt.load_table(bad)


def test_trailing_comma_header_still_reads(tmp_path):
    path = tmp_path / 'gt.csv'
    path.write_text('stamp, x, y,\n1.0,1,2,\n2.0,3,4,\n')
    table = gt.load_table(path)
    np.testing.assert_array_equal(table.stamps_ns, [1_000_000_000, 2_000_000_000])
    np.testing.assert_allclose(table.positions, [[1, 2, 0], [3, 4, 0]])
