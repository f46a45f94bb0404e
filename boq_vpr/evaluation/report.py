"""The files ``boq-vpr evaluate`` writes besides ``metrics.json``.

A Markdown summary (``summary.md``), the PNG plots and ``candidates.csv`` (the outcome of every
frame).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..inputs.ground_truth import Criterion, positive_matrix

if TYPE_CHECKING:
    from .frames import Frames
    from .runs import Run
    from .scoring import Scored


def fmt(v, digits: int = 3) -> str:
    """Format a figure for a report: floats with ``digits`` decimals, None and NaN as n/a."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return 'n/a'
    if isinstance(v, float):
        return f'{v:.{digits}f}'
    return str(v)


def summary_markdown(metrics: dict, title: str, figures: list[str]) -> str:
    """Write a short Markdown report of ``metrics.json``."""
    lines = [f'# {title}', '']
    setup = metrics['setup']
    lines += [f'- mode: **{metrics["mode"]}**; queries: `{setup["query"]}`' +
              (f'; map: `{setup["map"]}`' if setup.get('map') else ''),
              f'- model: {setup.get("model", "?")} (fingerprint `{setup.get("fingerprint", "?")}`)']
    index = setup.get('index')
    if index:
        opts = ', '.join(f'{k}={v}' for k, v in (index.get('options') or {}).items())
        lines.append(f'- map index: {index["type"]}{f" ({opts})" if opts else ""}, from the {index["source"]}')
    if setup.get('random_weights'):
        lines.append('- **weights are random**: these figures check the pipeline, they say nothing about accuracy')
    gt = metrics.get('ground_truth')
    lines.append(f'- ground truth: {gt["criterion"]} ({gt["source"]})' if gt else
                 '- ground truth: none, so recall and precision are not computed')
    c = metrics['counts']
    lines += ['', '| counts | |', '|---|---|'] + [f'| {k.replace("_", " ")} | {v} |' for k, v in c.items()]
    outcomes = metrics.get('outcomes')
    if outcomes:
        from ..detection import OUTCOMES
        lines += ['', f'Outcome of every processed frame ({sum(outcomes.values())} frames):', '',
                  '| outcome | frames | meaning |', '|---|---|---|']
        lines += [f'| {k} | {n} | {OUTCOMES.get(k, "")} |' for k, n in outcomes.items()]
    if 'recall_at_k' in metrics:
        ks = metrics['recall_at_k']
        lines += ['', '| ' + ' | '.join(f'R@{k}' for k in ks) + ' |', '|' + '---|' * len(ks),
                  '| ' + ' | '.join(fmt(v) for v in ks.values()) + ' |']
    if 'precision_recall' in metrics:
        pr, op = metrics['precision_recall'], metrics['operating_point']
        lines += ['', '| AUC-PR | max recall @ 100% precision | F1 max (threshold) '
                      '| configured: precision / recall / F1 |',
                  '|---|---|---|---|',
                  f'| {fmt(pr["auc_pr"])} | {fmt(pr["max_recall_at_100_precision"])} | '
                  f'{fmt(pr["f1_max"]["f1"])} ({fmt(pr["f1_max"]["threshold"])}) | '
                  f'{fmt(op["precision"])} / {fmt(op["recall"])} / {fmt(op["f1"])} '
                  f'(TP {op["tp"]}, FP {op["fp"]}, FN {op["fn"]}, TN {op["tn"]}) |']
    lat = metrics.get('latency', {})
    q = lat.get('query', {})
    if q:
        rd = q.get('read_decode_ms', {})
        det = lat.get('detect_ms', {})
        lines += ['', '| stage | ms |', '|---|---|',
                  f'| bag read + decode (per frame, p50 / p95) | {fmt(rd.get("p50"))} / {fmt(rd.get("p95"))} |',
                  f'| preprocess (per image, batch {q.get("encode_batch_size")}) '
                  f'| {fmt(q.get("preprocess_ms_per_image"))} |',
                  f'| inference (per image, batch {q.get("encode_batch_size")}) | {fmt(q.get("infer_ms_per_image"))} |',
                  f'| detector (per frame, p50 / p95) | {fmt(det.get("p50"))} / {fmt(det.get("p95"))} |']
    sw = metrics.get('sweep')
    if sw:
        lines += ['', f'Threshold sweep (target precision {sw["target_precision"]}): ' +
                  (', '.join(f'`{k}: {v}`' for k, v in sw['recommended'].items()) +
                   f' gives precision {fmt(sw["expected"]["precision"])}, recall {fmt(sw["expected"]["recall"])}'
                   if sw.get('recommended') else sw.get('note', 'no recommendation'))]
    if 'live' in metrics:
        lv = metrics['live']
        cmp_ = lv['comparison']
        op = lv.get('operating_point') or {}
        lines += ['', f'Live run (`{lv["source"]}`): {cmp_["same"]} of {cmp_["queries"]} queries give the same first '
                      f'candidate as offline, {cmp_["different_match"]} differ, {cmp_["offline_only"]} offline only, '
                      f'{cmp_["live_only"]} live only; node: {lv["node"].get("frames_processed", "?")} frames '
                      f'processed, {lv["node"].get("frames_dropped", "?")} dropped, '
                      f'{lv["node"].get("frames_rejected", "?")} rejected.'
                      + (f' Live precision / recall: {fmt(op.get("precision"))} / {fmt(op.get("recall"))}.'
                         if op else '')]
    rep = metrics.get('input', {})
    for name, r in rep.items():
        if r.get('out_of_order_stamps') or r.get('skipped'):
            lines.append(f'- {name}: {r.get("skipped", 0)} frames skipped, {r.get("out_of_order_stamps", 0)} stamps '
                         'out of order (evaluated in stamp order)')
    if figures:
        lines += [''] + [f'![{Path(f).stem}]({Path(f).name})' for f in figures]
    return '\n'.join(lines) + '\n'


def write_plots(out: Path, title: str, scored: Scored, run: Run, queries: Frames, map_frames: Frames,
                metrics: dict) -> list[str]:
    """Write the PNG plots of an evaluation into ``out``; return their paths.

    The precision-recall curve, the accepted loops and the descriptor similarity.
    """
    from . import plots
    from .scoring import eligible_mask
    figs = []
    if scored.curve is not None:
        pr = metrics['precision_recall']
        figs.append(str(plots.pr_curve(out / 'pr_curve.png', scored.curve, f'{title}: precision-recall',
                                       pr['auc_pr'], metrics['operating_point'], pr['max_recall_at_100_precision'])))
    acc = run.accepted
    sel = np.flatnonzero(acc >= 0)
    q_rows = run.query_index[sel]
    m_rows = acc[sel]
    if scored.query_index is not None:
        ok_by_query = dict(zip(scored.query_index.tolist(), scored.accepted_correct.tolist()))
        correct = np.array([ok_by_query.get(int(q), False) for q in q_rows], bool)
        known = np.array([int(q) in ok_by_query for q in q_rows], bool)
        if scored.by == 'position':
            qpos, mpos = queries.gt.positions, map_frames.gt.positions
            edges = np.stack([q_rows[known], m_rows[known]], axis=1) if known.any() else np.zeros((0, 2), int)
            figs.append(str(plots.trajectory(out / 'loops.png', qpos[:, :2],
                                             None if map_frames is queries else mpos[:, :2], edges,
                                             correct[known], f'{title}: accepted loop closures')))
        else:
            positives = []
            if scored.has_positive is not None:
                crit = Criterion(frame_tolerance=metrics['ground_truth_frame_tolerance'], by='frame')
                pm = positive_matrix(queries.gt.subset(scored.query_index), map_frames.gt, crit, 'frame')
                pm &= eligible_mask(run)[np.searchsorted(run.query_index, scored.query_index)]
                qi, mi = np.nonzero(pm)
                positives = (scored.query_index[qi], mi)
            figs.append(str(plots.loops_by_index(
                out / 'loops.png', q_rows[known], m_rows[known], correct[known], positives or None,
                f'{title}: accepted loop closures', xlabel='query frame (sequence index)',
                ylabel='matched frame (map sequence index)')))
        marks = (q_rows[known], m_rows[known], correct[known])
    else:
        marks = (q_rows, m_rows, np.zeros(len(q_rows), bool))
    figs.append(str(plots.similarity_matrix(out / 'similarity.png', queries.descriptors, map_frames.descriptors,
                                            f'{title}: descriptor similarity', marks=marks if scored.query_index
                                            is not None else None,
                                            xlabel='map frame' if map_frames is not queries else 'frame',
                                            ylabel='query frame' if map_frames is not queries else 'frame')))
    return figs


CANDIDATE_CSV_COLUMNS = ('query_frame', 'query_stamp_ns', 'query_id', 'outcome', 'reason', 'decision_score',
                         'best_frame', 'best_score', 'match_frame', 'match_id', 'match_stamp_ns', 'session', 'kind',
                         'score', 'rank', 'verified', 'inliers')


def write_candidates(path: Path, run: Run, queries: Frames) -> None:
    """Write ``candidates.csv``: one row per processed frame with its outcome and reason.

    Frames with several accepted candidates: one row per candidate, best first); match columns are
    empty unless accepted.
    """
    by_query: dict[int, list[dict]] = {}
    for row in run.candidates:
        by_query.setdefault(int(row['query_frame']), []).append(row)
    rows = []
    for q, i in enumerate(run.query_index):
        i = int(i)
        base = {'query_frame': i, 'query_stamp_ns': int(queries.stamps_ns[i]),
                'query_id': int(run.map_ids[i]) if run.mode == 'slam' and run.map_ids[i] >= 0 else '',
                'outcome': run.outcomes[q], 'reason': run.reasons[q],
                'decision_score': csv_float(run.decision[q]),
                'best_frame': int(run.best[q]) if run.best[q] >= 0 else '', 'best_score': csv_float(run.best_score[q])}
        for cand in by_query.get(i, [{}]):
            rows.append({**base, **{c: cand.get(c, '') for c in CANDIDATE_CSV_COLUMNS[8:]}})
    for i, reason in run.skipped:
        rows.append({'query_frame': i, 'query_stamp_ns': int(queries.stamps_ns[i]), 'outcome': 'not_keyframe',
                     'reason': reason})
    rows.sort(key=lambda r: r['query_frame'])      # stable: a frame's candidates stay best first
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(CANDIDATE_CSV_COLUMNS), restval='')
        w.writeheader()
        w.writerows(rows)


def csv_float(v) -> str:
    """Format a number for the candidates CSV: 6 significant digits, empty when not finite."""
    v = float(v)
    return '' if not math.isfinite(v) else f'{v:.6g}'
