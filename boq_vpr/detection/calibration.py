"""A loop-closure threshold from the map's own scores.

How unlikely is the best match if the query has no true match in the map?

A fixed cosine threshold means something different for every model, input size and environment.
Instead, the user asks for a false-alarm rate per query (``false_alarm_rate``, e.g. 0.001), and
each query's best score is judged against the background formed by the other keyframes it
retrieves, online, without labels, and as the map grows.

Method (extreme-value reasoning on what the search returns, so it works with approximate indexes
too). The search returns the query's ``k`` best eligible keyframes, best first. The best match's
own neighbourhood (keyframes within ``radius`` ids of it: the same stretch of the route) is set
aside, and the rest is thinned to one peak per ``radius`` ids, so that neighbouring keyframes of
one look-alike place count once. These peaks ``r_1 >= ... >= r_n`` are the upper tail of the
query's background scores. For a bulk that is Gaussian-like (what descriptor similarities over
many unrelated places give), the upper tail is in the Gumbel domain of attraction: the
exceedances ``r_i - r_n`` over the lowest peak are close to exponential with one scale ``beta``,
measured on the ``m = n - 1`` exceedances. If the best match were just one more background place, the
best of ``n`` places would exceed ``u = r_n`` by ``x beta = s_best - u`` with probability

    p = 1 - (1 - (1 + x / m) ** -m) ** n

(the exponential with the scale's own uncertainty), and a match is accepted when
``p <= false_alarm_rate``. ``p`` depends only on how far the best match stands out of the background in
units of the background's own spread, so one ``false_alarm_rate`` transfers across models and score
scales; adding keyframes changes the background and therefore the threshold. Too few background peaks
(an empty or tiny map) give no decision (``None``). A map of at most ``COMPLETE_MAX`` eligible
keyframes is searched completely, and its whole background judges the match (``complete_p_value``).

The tail must be the *upper* tail on maps of every size: where the retrieved peaks are a large
share of the map (a few hundred keyframes), only the best ``TAIL_FRACTION`` of its places count
(``tail_size``); otherwise the fitted scale is that of the whole bulk and an unmistakable match
looks ordinary.

The sequence stage (``boq_vpr.detection.sequence``) judges its hypotheses with the same
tests (``judge``), on sequence scores instead of single scores: on a small map, on the double-centred,
standardized scores of ``complete_line_scores``.

The exponential-tail and independence assumptions are approximations; the false-alarm rate they
give is measured against the requested one by map size in docs/detector.md
(``boq-vpr bench loops --only calibration``).
No library implements this for retrieval scores (scipy's ``genpareto`` fits need many more
samples than a top-k list holds), so it is the few lines below.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import stdtr

DEFAULT_K = 50            # neighbours searched per query for the background
DEFAULT_MIN_SAMPLES = 5   # background peaks needed for a decision
TAIL_FRACTION = 0.25      # the largest share of a map's places that counts as its upper tail
COMPLETE_DOF = 10         # Student's t of a completely searched background (heavier tails than a Gaussian)
COMPLETE_MAX = 200        # maps of up to this many eligible keyframes are searched completely


@dataclass(frozen=True)
class Significance:
    """How far the best score stands out of the query's background tail."""

    p_value: float        # probability of a background match at least this far out (false alarm)
    excess: float         # (best - u) / beta
    beta: float           # scale of the background: of its tail (exponential), or its spread (complete)
    threshold: float      # u: the lowest tail peak, or the background's mean (complete)
    samples: int          # background peaks used

    @property
    def log10_p(self) -> float:
        """-log10(p_value): the decision score (larger = more significant)."""
        return -math.log10(max(self.p_value, 1e-300))


def place_peaks(ids: np.ndarray, radius: int) -> np.ndarray:
    """Return the indices of the peaks of ``ids`` (ordered best first).

    Each is more than ``radius`` ids from every better peak, so neighbouring keyframes of one place
    count once.
    """
    ids = np.asarray(ids, np.int64)
    if ids.size == 0:
        return np.zeros(0, np.int64)
    r = max(int(radius), 0)
    lo = int(ids.min()) - r
    span = int(ids.max()) + r + 1 - lo
    keep = []
    if span <= 1 << 24:
        # a flag per id in the range (fast); a set of ids for a range too wide
        blocked = bytearray(span)
        ones = b'\x01' * (2 * r + 1)
        for n, i in enumerate((ids - lo).tolist()):
            if not blocked[i]:
                blocked[i - r:i + r + 1] = ones
                keep.append(n)
    else:
        taken: set[int] = set()
        for n, i in enumerate(ids.tolist()):
            if i not in taken:
                taken.update(range(i - r, i + r + 1))
                keep.append(n)
    return np.asarray(keep, np.int64)


def background_peaks(scores: np.ndarray, ids: np.ndarray, radius: int) -> np.ndarray:
    """Return the scores of the background peaks.

    These are the retrieved keyframes more than ``radius`` ids from the best one and from every
    better-scored peak (``scores`` best first; ``ids`` -1 for padding).
    """
    scores = np.asarray(scores, np.float64).ravel()
    ids = np.asarray(ids, np.int64).ravel()
    assert scores.shape == ids.shape, 'scores and ids must have the same length'
    valid = (ids >= 0) & np.isfinite(scores)
    scores, ids = scores[valid], ids[valid]
    if ids.size == 0:
        return scores
    return scores[place_peaks(ids, radius)[1:]]


def tail_size(peaks: int, eligible: int | None, radius: int, min_samples: int) -> int:
    """How many of the ``peaks`` background peaks form the upper tail.

    The exponential model holds for the upper tail of the background only. In a large map the
    retrieved peaks are a small fraction of it and all of them are tail; in a small map they are
    most of the background (a map of 100 keyframes retrieved 50 deep puts the lowest peak near the
    median, and a tail fitted there is far too heavy). So the tail is capped at ``TAIL_FRACTION``
    of the eligible places (``eligible`` keyframes, one place per ``radius + 1`` ids), and never
    below ``min_samples``. ``eligible`` None: the map size is unknown, every peak is tail.
    """
    if eligible is None:
        return peaks
    places = max(1, int(eligible) // (int(radius) + 1))
    return min(peaks, max(int(min_samples), int(TAIL_FRACTION * places)))


def _tail_fit(tail: np.ndarray) -> tuple[float, float]:
    """Return (u, beta): the tail threshold (its last sample) and the mean exceedance of the others over it."""
    m = int(tail.size) - 1
    u = float(tail[-1])
    return u, float(np.sum(tail[:-1] - u) / m) if m > 0 else 0.0


def _spread(background: np.ndarray) -> tuple[float, float]:
    """Return the mean and the standard deviation (0 for a single sample) of a whole background."""
    return float(np.mean(background)), float(np.std(background, ddof=1)) if background.size > 1 else 0.0


def tail_p_value(best: float, tail: np.ndarray) -> tuple[float, float, float]:
    """Return (p, excess, beta) for ``best`` against the upper tail of the background.

    ``p``: the probability that the best of ``n = len(tail)`` background places exceeds the tail
    threshold ``u`` (the last of ``tail``, best first) by at least ``best - u``.

    The scale ``beta`` is the mean exceedance of the other ``m = n - 1`` tail samples over ``u``
    (exponential by the memoryless property), and the scale's own uncertainty is kept: one
    background place exceeds ``u`` by ``x beta`` with probability ``(1 + x/m)^-m`` (an exponential
    with an estimated scale; the exponential itself for large ``m``), so a match far out of a
    background of a few places is significant, as it should be, where a scale fitted with the
    best match included would cap the significance of anything at about ``n e^-n``.
    """
    n = int(tail.size)
    u, beta = _tail_fit(tail)
    return (*_tail_p(best, n, u, beta), beta)


def _tail_p(best: float, n: int, u: float, beta: float) -> tuple[float, float]:
    """Return (p, excess) of ``best`` against a tail of ``n`` places with threshold ``u`` and scale ``beta``."""
    m = n - 1
    if beta <= 1e-9:
        # a flat background (identical scores): anything above it stands out infinitely
        excess = math.inf if best > u + 1e-9 else 0.0
    else:
        excess = (best - u) / beta
    if excess <= 0:
        return 1.0, float(excess)
    if not math.isfinite(excess):
        return 0.0, float(excess)
    one = math.exp(-m * math.log1p(excess / m))          # (1 + x/m)^-m
    # 1 - (1 - one)^n, computed without cancellation for a small ``one``
    p = -math.expm1(n * math.log1p(-one)) if one < 1.0 else 1.0
    return float(min(max(p, 0.0), 1.0)), float(excess)


def complete_p_value(best: float, background: np.ndarray) -> tuple[float, float, float, float]:
    """Return (p, z, mean, std) for ``best`` against the whole background of a small map.

    ``p``: the probability that the best of ``n = len(background) + 1`` places scores at least
    ``best`` when ``background`` holds every other place of the map (a small map, searched
    completely). The whole background is known, so its mean and spread are measured, not
    extrapolated from a few tail samples; Student's t with ``COMPLETE_DOF`` degrees of freedom, a
    little heavier-tailed than a Gaussian, gives each place's chance of standing out ``z`` spreads.
    """
    mean, std = _spread(background)
    return (*_complete_p(best, int(background.size) + 1, mean, std), mean, std)


def _complete_p(best: float, n: int, mean: float, std: float) -> tuple[float, float]:
    """Return (p, z) of ``best`` among ``n`` places whose background has this mean and spread."""
    if std <= 1e-9:
        z = math.inf if best > mean + 1e-9 else 0.0
    else:
        z = (best - mean) / std
    # Student's t survival function (scipy.special.stdtr is its distribution function)
    one = float(stdtr(COMPLETE_DOF, -z)) if math.isfinite(z) else 0.0
    p = -math.expm1(n * math.log1p(-one)) if one < 1.0 else 1.0
    return float(min(max(p, 0.0), 1.0)), float(z)


def p_values(scores: np.ndarray, background: np.ndarray, eligible: int | None, complete: bool, radius: int,
             min_samples: int) -> np.ndarray:
    """Return the false-alarm probability of each of ``scores`` against one background, as ``judge`` gives it.

    The background is fitted once (the places ranked after the best one); NaN when ``judge`` gives
    no decision.
    """
    scores = np.asarray(scores, np.float64)
    if background.size < max(2, min_samples):
        return np.full(scores.shape, np.nan)
    if complete:
        n = int(background.size) + 1
        mean, std = _spread(background)
        return np.array([_complete_p(s, n, mean, std)[0] for s in scores.tolist()], np.float64)
    n = max(2, tail_size(int(background.size), eligible, radius, min_samples))
    u, beta = _tail_fit(background[:n])
    return np.array([_tail_p(s, n, u, beta)[0] for s in scores.tolist()], np.float64)


def judge(best: float, background: np.ndarray, eligible: int | None, complete: bool, radius: int,
          min_samples: int) -> Significance | None:
    """Return the significance of ``best`` against its background peaks (best first).

    It is judged from every other place when the background is ``complete``, else from the upper
    tail (``tail_size``); None when fewer than ``min_samples`` peaks exist.
    """
    if background.size < max(2, min_samples):
        return None
    if complete:
        p, z, mean, std = complete_p_value(best, background)
        return Significance(p, z, std, mean, int(background.size))
    n = max(2, tail_size(int(background.size), eligible, radius, min_samples))
    tail = background[:n]
    p, excess, beta = tail_p_value(best, tail)
    return Significance(p, excess, beta, float(tail[-1]), n)


def significance(scores: np.ndarray, ids: np.ndarray, radius: int,
                 min_samples: int = DEFAULT_MIN_SAMPLES, eligible: int | None = None) -> Significance | None:
    """Return the significance of the best of ``scores`` against the other retrieved keyframes.

    ``scores`` is one query's search result, best first. None when fewer than ``min_samples``
    background peaks exist.
    ``eligible``: how many keyframes the search could return. When the search returned all of
    them, the whole background is known and judged as such (``complete_p_value``); otherwise the
    tail is capped to a share of the eligible places (``tail_size``). None: every retrieved peak is
    tail.
    """
    scores = np.asarray(scores, np.float64).ravel()
    ids = np.asarray(ids, np.int64).ravel()
    if scores.size == 0 or ids[0] < 0:
        return None
    valid = int(np.count_nonzero(ids >= 0))
    complete = eligible is not None and valid >= eligible
    return judge(float(scores[0]), background_peaks(scores, ids, radius), eligible, complete, radius, min_samples)


def complete_line_scores(ids: list[np.ndarray], values: list[np.ndarray], aligned: np.ndarray) -> np.ndarray:
    """Return the scores of the sequence stage's lines through a completely searched map.

    ``ids``, ``values``: each query's keyframe ids and evidence (the whole map, a small one); ``aligned``
    [lines, queries]: each line's keyframe per query (-1: none). The evidence is a table [query, keyframe]:
    its row and column means (a keyframe alike to everything, or repeated at a stop) are taken out, and a
    line's sum is divided by its spread were the queries unrelated to the map (its keyframes' column
    variances). Judged by their plain sums, lines over more keyframes than others, or over such keyframes,
    stood out of the rest by themselves (docs/detector.md, false alarms by map size).
    """
    every = np.concatenate(ids)
    lo, span = int(every.min()), int(every.max() - every.min()) + 1
    if span <= 8 * every.size:      # column of each keyframe id from a dense table (np.unique is 5x slower)
        present = np.zeros(span + 1, bool)
        present[every - lo] = True
        where = np.where(present, np.cumsum(present) - 1, -1)
        col = where[every - lo]
        k = where[np.where((aligned >= lo) & (aligned < lo + span), aligned - lo, span)]
    else:
        keys, col = np.unique(every, return_inverse=True)
        k = np.minimum(np.searchsorted(keys, aligned), keys.size - 1)
        k = np.where((aligned >= 0) & (keys[k] == aligned), k, -1)
    W = len(values)
    row = np.repeat(np.arange(W), [v.size for v in values])
    table, have = np.zeros((W, col.max() + 1)), np.zeros((W, col.max() + 1), bool)
    table[row, col], have[row, col] = np.concatenate(values), True
    table -= (table.sum(axis=1) / np.maximum(have.sum(axis=1), 1))[:, None]
    table *= have
    counts = have.sum(axis=0)
    table -= table.sum(axis=0) / np.maximum(counts, 1)
    table *= have
    rows = np.arange(W)[None, :]
    ok = (k >= 0) & have[rows, k]
    terms = np.where(ok, table[rows, k], 0.0)
    # each column's variance without the line's own query and its neighbours (a true match, seen by a few
    # queries in a row, would widen its own spread)
    near = rows + np.arange(3)[:, None, None]
    squares = (table ** 2).sum(axis=0)[k] - (np.pad(table, ((1, 1), (0, 0))) ** 2)[near, k].sum(axis=0)
    kept = counts[k] - np.pad(have, ((1, 1), (0, 0)))[near, k].sum(axis=0)
    spread = np.where(ok, squares / np.maximum(kept, 1), 0.0).sum(axis=1)
    return terms.sum(axis=1) / np.sqrt(np.maximum(spread, 1e-12))
