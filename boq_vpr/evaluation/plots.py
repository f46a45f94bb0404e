"""Figures of an evaluation (PNG): precision-recall curve, trajectory with true and false loop edges, similarity matrix.

Display only: every number drawn here is computed in ``metrics`` and ``evaluation``.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .metrics import PRCurve

log = logging.getLogger(__name__)

TRUE_COLOR = '#2ca02c'
FALSE_COLOR = '#d62728'


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches='tight')
    return path


def pr_curve(path: str | Path, curve: PRCurve, title: str = 'Precision-recall', auc: float | None = None,
             operating_point: dict | None = None, r100: float | None = None) -> Path:
    """Precision vs recall over decision-score thresholds, with the detector's operating point."""
    fig = Figure(figsize=(5.2, 4.4))
    ax = fig.add_subplot()
    if len(curve.recall):
        r = np.r_[0.0, curve.recall]
        p = np.r_[curve.precision[0], curve.precision]
        ax.step(r, p, where='pre', color='#1f77b4', label=f'decision score (AUC {auc:.3f})'
                if auc is not None and not math.isnan(auc) else 'decision score')
    if operating_point and operating_point.get('precision') is not None \
            and not math.isnan(operating_point.get('precision') or math.nan):
        ax.plot([operating_point['recall']], [operating_point['precision']], 'o', color='black',
                label=f'configured detector (P {operating_point["precision"]:.2f}, R {operating_point["recall"]:.2f})')
    if r100 is not None and not math.isnan(r100):
        ax.axvline(r100, color='grey', ls=':', label=f'max recall at 100% precision {r100:.2f}')
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel('recall')
    ax.set_ylabel('precision')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc='lower left', fontsize=8)
    return _save(fig, path)


def trajectory(path: str | Path, query_xy: np.ndarray, map_xy: np.ndarray | None, edges: np.ndarray,
               correct: np.ndarray, title: str = 'Loop closures') -> Path:
    """Plot trajectories (x, y) with one segment per accepted loop closure.

    Segments go from the query -> matched map frame), green when it is a true match, red when not.
    ``edges``: ``[E, 2]`` (query row, map row).
    """
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    if map_xy is not None:
        ax.plot(map_xy[:, 0], map_xy[:, 1], '-', color='#7f7f7f', lw=1, label='map')
    ax.plot(query_xy[:, 0], query_xy[:, 1], '-', color='#1f77b4', lw=1, alpha=0.6, label='queries')
    ref = map_xy if map_xy is not None else query_xy
    for ok, color, name in ((True, TRUE_COLOR, 'true loop'), (False, FALSE_COLOR, 'false loop')):
        sel = edges[correct == ok]
        for j, (q, m) in enumerate(sel):
            ax.plot([query_xy[q, 0], ref[m, 0]], [query_xy[q, 1], ref[m, 1]], '-', color=color, lw=0.8,
                    alpha=0.8, label=f'{name} ({len(sel)})' if j == 0 else None)
    ax.set_aspect('equal', adjustable='datalim')
    ax.set_xlabel('x [m]')
    ax.set_ylabel('y [m]')
    ax.set_title(title)
    ax.legend(loc='best', fontsize=8)
    return _save(fig, path)


def loops_by_index(path: str | Path, query_pos: np.ndarray, match_pos: np.ndarray, correct: np.ndarray,
                   truth: tuple[np.ndarray, np.ndarray] | None = None, title: str = 'Loop closures',
                   xlabel: str = 'query frame', ylabel: str = 'matched frame') -> Path:
    """Plot accepted loop closures by frame index, for ground truth without positions.

    Each accepted loop closure as a point (query frame, matched frame), green when true, red when
    false; the true matches in grey.
    """
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    if truth is not None and len(truth[0]):
        ax.plot(truth[0], truth[1], 's', color='#d9d9d9', ms=3, label='true matches')
    for ok, color, name in ((True, TRUE_COLOR, 'true loop'), (False, FALSE_COLOR, 'false loop')):
        sel = correct == ok
        ax.plot(query_pos[sel], match_pos[sel], 'o', color=color, ms=3, label=f'{name} ({int(sel.sum())})')
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc='best', fontsize=8)
    return _save(fig, path)


def similarity_matrix(path: str | Path, queries: np.ndarray, reference: np.ndarray, title: str = 'Similarity',
                      marks: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, max_side: int = 800,
                      xlabel: str = 'map frame', ylabel: str = 'query frame') -> Path:
    """Plot the cosine similarity of query descriptors (rows) and map descriptors (columns).

    Subsampled to ``max_side``; ``marks`` (query rows, map columns, correct) drawn on top.
    """
    assert queries.ndim == 2 and reference.ndim == 2 and queries.shape[1] == reference.shape[1]
    sq = max(1, math.ceil(len(queries) / max_side))
    sr = max(1, math.ceil(len(reference) / max_side))
    s = queries[::sq] @ reference[::sr].T
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    im = ax.imshow(s, cmap='viridis', aspect='auto', interpolation='nearest',
                   extent=(-0.5, len(reference) - 0.5, len(queries) - 0.5, -0.5))
    fig.colorbar(im, ax=ax, label='cosine similarity')
    if marks is not None and len(marks[0]):
        q, m, ok = marks
        ax.plot(m[ok], q[ok], '.', color=TRUE_COLOR, ms=3, label='true loop')
        ax.plot(m[~ok], q[~ok], '.', color=FALSE_COLOR, ms=3, label='false loop')
        ax.legend(loc='lower right', fontsize=8)
    ax.set_xlabel(xlabel + (f' (every {sr})' if sr > 1 else ''))
    ax.set_ylabel(ylabel + (f' (every {sq})' if sq > 1 else ''))
    ax.set_title(title)
    return _save(fig, path)
