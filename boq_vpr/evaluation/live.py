"""Comparing a live node's recorded ``~/candidates`` with an offline run over the same frames."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..inputs import bags
from ..inputs import ground_truth as gtm
from ..errors import BagError
from ..detection import CANDIDATE_COLUMNS
from ..values import NS_PER_S
from .frames import Frames
from .runs import Run
from .scoring import as_jsonable



@dataclass
class LiveRecording:
    """The node's outputs recorded during a replay.

    Candidate rows (stamps in ns, rounded from the float seconds of the table) and the last pipeline
    diagnostics.
    """

    source: str
    topic: str
    rows: list[dict]
    diagnostics: dict[str, str]
    messages: int


def read_live(bag: str | Path, topic: str | None = None) -> LiveRecording:
    """Read the candidates and the node's diagnostics from a bag recorded with ``boq-vpr replay --record``.

    Candidates (``~/candidates`` tables) and the newest ``/diagnostics`` pipeline status from a bag
    recorded with ``boq-vpr replay --record``.
    """
    topics = bags.list_topics(bag)
    if topic is None:
        found = [t for t in topics.values() if t.name.endswith('/candidates')
                 and t.msgtype == 'std_msgs/msg/Float64MultiArray']
        if len(found) != 1:
            raise BagError(f'{bag}: expected one recorded .../candidates topic (std_msgs/Float64MultiArray), found '
                           f'{len(found)}; name it with --live-topic. The bag has: '
                           + '; '.join(str(t) for t in topics.values()))
        topic = found[0].name
    elif topic not in topics:
        raise BagError(f'{bag}: no topic {topic!r}. The bag has: ' + '; '.join(str(t) for t in topics.values()))
    wanted = [topic] + (['/diagnostics'] if '/diagnostics' in topics else [])
    rows: list[dict] = []
    diag: dict[str, str] = {}
    n = 0
    for name, msgtype, _, msg in bags.iter_messages(bag, wanted):
        if name == topic:
            n += 1
            cols = str(msg.layout.dim[1].label).split(',') if len(msg.layout.dim) > 1 else list(CANDIDATE_COLUMNS)
            data = np.asarray(msg.data, np.float64).reshape(-1, len(cols))
            for r in data:
                row = dict(zip(cols, r.tolist()))
                row['query_stamp_ns'] = int(round(row['query_stamp'] * NS_PER_S))
                row['match_stamp_ns'] = int(round(row['match_stamp'] * NS_PER_S))
                rows.append(row)
        elif msgtype == 'diagnostic_msgs/msg/DiagnosticArray':
            for status in msg.status:
                if 'pipeline' in status.name:
                    diag = {kv.key: kv.value for kv in status.values}
    return LiveRecording(str(bag), topic, rows, diag, n)


def _nearest(stamps: np.ndarray, values: np.ndarray, tol_ns: int) -> np.ndarray:
    """Index into ``stamps`` (any order) of the stamp nearest to each value within ``tol_ns`` (-1 if none)."""
    return gtm.nearest_labels(values, stamps, np.arange(len(stamps)), tol_ns)


def live_as_run(live: LiveRecording, offline: Run, queries: Frames, map_frames: Frames,
                tol_ns: int = 1_000_000) -> tuple[Run, dict]:
    """Turn the live candidates into a ``Run`` over the same queries as ``offline``.

    The offline run gives the exclusion windows), ready for ``score_run``; plus what could not be
    matched to frames.
    """
    q_stamps = queries.stamps_ns[offline.query_index]
    first = {}
    for row in live.rows:
        if int(row.get('rank', 0)) == 0 and row['query_stamp_ns'] not in first:
            first[row['query_stamp_ns']] = row
    qs = np.array(sorted(first), np.int64)
    q_pos = _nearest(q_stamps, qs, tol_ns)
    m_pos = _nearest(map_frames.stamps_ns, np.array([first[s]['match_stamp_ns'] for s in qs], np.int64), tol_ns)
    accepted = np.full(len(q_stamps), -1, np.int64)
    score = np.full(len(q_stamps), np.nan)
    unmatched_queries = int((q_pos < 0).sum())
    unmatched_matches = 0
    for s, qp, mp in zip(qs, q_pos, m_pos):
        if qp < 0:
            continue
        if mp < 0:
            unmatched_matches += 1
            continue
        accepted[qp] = mp
        score[qp] = first[s]['score']
    n = len(q_stamps)
    run = Run('live', offline.config, offline.query_index.copy(), offline.cut.copy(), np.full(n, np.nan),
              np.full(n, -1, np.int64), np.full(n, np.nan), accepted, score,
              (accepted >= 0).astype(np.int64), [''] * n, offline.map_ids.copy(), np.zeros(0))
    run.mode = offline.mode
    return run, {'candidate_rows': len(live.rows), 'queries_with_candidates': len(qs),
                 'queries_not_in_bag': unmatched_queries, 'matches_not_in_map': unmatched_matches}


def compare_live(offline: Run, live: Run, queries: Frames, score_tol: float = 1e-3) -> dict:
    """Compare the live node's first accepted candidate with the offline one, query by query.

    The two agree when they match the same frame with scores within ``score_tol``.
    """
    assert np.array_equal(offline.query_index, live.query_index)
    off, on = offline.accepted, live.accepted
    both = (off >= 0) & (on >= 0)
    same = both & (off == on) & (np.abs(np.nan_to_num(offline.accepted_score - live.accepted_score, nan=1.0))
                                 <= score_tol)
    diff = np.flatnonzero(both & ~same)
    only_off = np.flatnonzero((off >= 0) & (on < 0))
    only_live = np.flatnonzero((off < 0) & (on >= 0))
    def fmt(idx):
        return [{'query_frame': int(offline.query_index[i]),
                 'query_stamp_ns': int(queries.stamps_ns[offline.query_index[i]]),
                 'offline_match_frame': int(off[i]), 'live_match_frame': int(on[i]),
                 'offline_score': as_jsonable(offline.accepted_score[i]),
                 'live_score': as_jsonable(live.accepted_score[i])} for i in idx[:50]]
    score_err = np.abs(offline.accepted_score[same] - live.accepted_score[same])
    return {'queries': int(len(off)), 'offline_accepted': int((off >= 0).sum()), 'live_accepted': int((on >= 0).sum()),
            'same': int(same.sum()), 'different_match': int(diff.size), 'offline_only': int(only_off.size),
            'live_only': int(only_live.size), 'max_score_difference': float(score_err.max()) if score_err.size else 0.0,
            'examples': {'different_match': fmt(diff), 'offline_only': fmt(only_off), 'live_only': fmt(only_live)}}
