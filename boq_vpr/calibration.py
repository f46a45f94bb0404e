"""A loop-closure threshold from the map's own scores: how unlikely is the best match if the query
has no true match in the map?

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
exceedances ``r_i - r_n`` over the lowest peak are close to exponential with one scale ``beta``. If the best match were just one more
background place, the best of those ``n`` tail samples would exceed ``u = r_n`` by
``x = s_best - u`` with probability

    p = 1 - (1 - exp(-x / beta)) ** n

and a match is accepted when ``p <= false_alarm_rate``. ``p`` depends only on how far the best
match stands out of the background in units of the background's own spread (the scale is estimated from the n exceedances, the best one
included, as maximum likelihood under the hypothesis that it is background), so one
``false_alarm_rate`` transfers across models and score scales; adding keyframes changes the
background and therefore the threshold. Too few background peaks (an empty or tiny map) give no
decision (``None``).

The exponential-tail and independence assumptions are approximations; the false-alarm rate they
give is measured against the requested one in the README (``boq-vpr bench calibration``).
No library implements this for retrieval scores (scipy's ``genpareto`` fits need many more
samples than a top-k list holds), so it is the few lines below.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_K = 50            # neighbours searched per query for the background
DEFAULT_MIN_SAMPLES = 5   # background peaks needed for a decision


@dataclass(frozen=True)
class Significance:
    """How far the best score stands out of the query's background tail."""

    p_value: float        # probability of a background match at least this far out (false alarm)
    excess: float         # (best - u) / beta
    beta: float           # exponential scale of the background tail
    threshold: float      # u: the lowest background peak
    samples: int          # background peaks used

    @property
    def log10_p(self) -> float:
        """-log10(p_value): the decision score (larger = more significant)."""
        return -math.log10(max(self.p_value, 1e-300))


def background_peaks(scores: np.ndarray, ids: np.ndarray, radius: int) -> np.ndarray:
    """Scores of the background peaks: retrieved keyframes more than ``radius`` ids from the best
    one and from every better-scored peak (``scores`` best first; ``ids`` -1 for padding)."""
    scores = np.asarray(scores, np.float64).ravel()
    ids = np.asarray(ids, np.int64).ravel()
    assert scores.shape == ids.shape, 'scores and ids must have the same length'
    valid = (ids >= 0) & np.isfinite(scores)
    scores, ids = scores[valid], ids[valid]
    if ids.size == 0:
        return scores
    taken = [int(ids[0])]
    peaks = []
    for s, i in zip(scores[1:], ids[1:]):
        if all(abs(int(i) - t) > radius for t in taken):
            taken.append(int(i))
            peaks.append(float(s))
    return np.asarray(peaks, np.float64)


def significance(scores: np.ndarray, ids: np.ndarray, radius: int,
                 min_samples: int = DEFAULT_MIN_SAMPLES) -> Significance | None:
    """The significance of the best of ``scores`` (one query's search result, best first) against
    the other retrieved keyframes; None when fewer than ``min_samples`` background peaks exist."""
    scores = np.asarray(scores, np.float64).ravel()
    ids = np.asarray(ids, np.int64).ravel()
    if scores.size == 0 or ids[0] < 0:
        return None
    peaks = background_peaks(scores, ids, radius)
    n = int(peaks.size)
    if n < max(2, min_samples):
        return None
    u = float(peaks[-1])
    best = float(scores[0])
    # maximum-likelihood scale of the exceedances under the null (the best is one of them)
    beta = float((np.sum(peaks[:-1] - u) + max(best - u, 0.0)) / n)
    if beta <= 1e-9:
        # a flat background (identical scores): anything above it stands out infinitely
        excess = math.inf if best > u + 1e-9 else 0.0
    else:
        excess = (best - u) / beta
    if excess <= 0:
        p = 1.0
    else:
        # 1 - (1 - e^-x)^n, computed without cancellation for large x
        p = -math.expm1(n * math.log1p(-math.exp(-excess))) if math.isfinite(excess) else 0.0
    return Significance(float(min(max(p, 0.0), 1.0)), float(excess), beta, u, n)
