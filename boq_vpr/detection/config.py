"""The detector's settings: every stage's parameters, validated, with the ranges named."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..values import parse_bool
from .calibration import DEFAULT_K as CALIBRATION_K, DEFAULT_MIN_SAMPLES
from .geometric import FEATURES

MODES = ('slam', 'localization')
ALIGNMENTS = ('auto', 'time')   # sequence alignment: travelled distance where odometry is given, or stamps


def described(default, doc: str) -> Any:
    """Return a dataclass field with its default and its description (``metadata['doc']``)."""
    return field(default=default, metadata={'doc': doc})


@dataclass
class DetectorConfig:
    """Every filter of the detector. ``from_dict`` validates and names bad keys and values.

    Each field carries its description in ``metadata['doc']``; the node's ``loop_closure.<field>``
    parameters are described with it.
    """

    mode: str = described('slam', "'slam' (keyframes query the past outside the exclusion window, then join the map) "
                          "or 'localization' (every frame queries a read-only prebuilt map).")
    session: str = described('', 'session label given to the keyframes this detector adds (slam mode). A label only: '
                             "the exclusion window and the loop/relocalization split go by the session's id range.")
    top_k: int = described(10, 'neighbours retrieved per query before filtering.')
    exclusion_time_s: float = described(30.0, 'slam mode: keyframes of the running session younger than this '
                                        '(relative to the query stamp) are never matched. 0 = off.')
    exclusion_frames: int = described(50, 'slam mode: the most recent this-many keyframes of the running session are '
                                      'never matched. 0 = off. With both set, the larger window wins.')
    min_score: float = described(0.0, 'absolute threshold on the cosine similarity of a match.')
    relative_score: float = described(0.0, 'relative threshold: a match is kept only if its score divided by the '
                                      'reference score (the best similarity between the query and the '
                                      '``relative_window`` most recent queries/keyframes, i.e. how similar the place '
                                      'looks to itself a moment ago) is at least this. 0 = off. Adapts to '
                                      'environments where all scores are high or low.')
    relative_window: int = described(5, 'how many recent queries/keyframes give the reference score.')
    temporal_consistency: int = described(2, 'number of consecutive queries whose matches must be consecutive in the '
                                          'map (within ``consistency_tolerance`` keyframe ids) before a match is '
                                          'accepted. 1 = off (every query decides alone).')
    consistency_tolerance: int = described(3, 'largest id step between the matches of consecutive queries that still '
                                           'counts as consecutive.')
    consistency_max_gap_s: float = described(0.0, 'a consistency chain breaks when consecutive queries are further '
                                             'apart in time than this. 0 = never.')
    nms_radius: int = described(3, 'non-maximum suppression: a candidate within this many keyframe ids of a '
                                'better-ranked one is dropped. 0 = off.')
    max_candidates: int = described(1, 'accepted candidates returned per query, best first.')
    geometric_verification: bool = described(False, 'check candidates with local features + RANSAC on stored keyframe '
                                             'thumbnails (needs images given to ``process``; in localization mode a '
                                             'map built with thumbnails).')
    geometric_features: str = described('orb', "'orb' or 'sift'.")
    geometric_ratio: float = described(0.8, "Lowe's ratio test threshold.")
    geometric_min_inliers: int = described(25, 'RANSAC inliers needed to verify a candidate.')
    geometric_ransac_px: float = described(3.0, 'RANSAC epipolar threshold in pixels of the working image.')
    geometric_working_side: int = described(320, 'images are resized to this longer side before feature extraction.')
    store_thumbnails: bool | None = described(None, 'slam mode: store keyframe thumbnails in the map (default: when '
                                              'geometric verification is on).')
    keyframe_min_time_s: float = described(0.5, 'slam mode: minimum time between keyframes. 0 = off.')
    keyframe_min_distance_m: float = described(0.0, 'slam mode: minimum travelled distance between keyframes (when '
                                               'positions are given). 0 = off.')
    keyframe_max_similarity: float = described(0.9, 'slam mode: a frame whose cosine similarity to the last keyframe '
                                               'exceeds this is not novel enough to become a keyframe. 1 = off.')
    false_alarm_rate: float = described(0.001, 'calibrated threshold: accept a match only if a query whose trajectory '
                                        'revisits nothing would produce one standing out as far with at most this '
                                        "probability (per query keyframe), judged from the query's own background "
                                        'scores (single frames) or from the competing hypotheses (sequences). 0 = off '
                                        '(and sequences off); otherwise in (0, 0.5].')
    calibration_k: int = described(CALIBRATION_K, 'neighbours searched per query to estimate the background (>= top_k '
                                   'is used).')
    calibration_radius: int = described(3, 'keyframes within this many ids of a better one belong to the same place '
                                        '(set aside from the background, and one background peak per place).')
    calibration_min_samples: int = described(DEFAULT_MIN_SAMPLES, 'background peaks needed for a decision; fewer (an '
                                             'empty or tiny map) leave the frame undecided.')
    sequence_length: int = described(40, 'query keyframes whose evidence is summed along a stretch of the map (the '
                                     'sequence stage); 1 = every keyframe decides alone. Needs false_alarm_rate > 0.')
    sequence_seeds: int = described(5, 'a hypothesis (a line along the map started by a query keyframe\'s best match) '
                                    'lives while one of this many most recent query keyframes matched the map '
                                    'keyframe it is at.')
    sequence_min_speed: float = described(0.8, 'slowest relative speed of the map stretch against the query '
                                          'trajectory (0.8: the map was driven 20% slower).')
    sequence_max_speed: float = described(1.25, 'fastest relative speed of the map stretch against the query '
                                          'trajectory.')
    sequence_speeds: int = described(3, 'relative speeds tried between sequence_min_speed and sequence_max_speed '
                                     '(spaced evenly in log).')
    sequence_max_gap_s: float = described(10.0, 'a gap longer than this between query keyframes (a time jump, a '
                                          'paused camera) starts a new sequence.')
    sequence_alignment: str = described('auto', 'how sequences are aligned with the map: auto = by travelled '
                                        'distance where the frames and the map keyframes have odometry positions '
                                        '(metric odometry), by stamps elsewhere; time = always by stamps.')

    @classmethod
    def from_dict(cls, d: dict) -> 'DetectorConfig':
        """Return a validated configuration from a dict (e.g. ROS parameters); unknown keys are an error."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(f'unknown detector parameter(s) {", ".join(unknown)}; valid: {", ".join(names)}')
        kwargs = {}
        for key, value in d.items():
            default = names[key].default
            try:
                if key == 'store_thumbnails':
                    kwargs[key] = None if value is None else parse_bool(key, value)
                elif isinstance(default, bool):
                    kwargs[key] = parse_bool(key, value)
                elif isinstance(default, int):
                    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                        raise ValueError
                    kwargs[key] = int(value)
                elif isinstance(default, float):
                    if isinstance(value, bool):
                        raise ValueError
                    kwargs[key] = float(value)
                else:
                    kwargs[key] = str(value)
            except (TypeError, ValueError):
                raise ConfigError(f'detector parameter {key} must be {type(default).__name__}, got {value!r}') from None
        config = cls(**kwargs)
        config.validate()
        return config

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """ConfigError naming the first bad value."""
        def bad(key: str, what: str):
            raise ConfigError(f'detector parameter {key}={getattr(self, key)!r}: {what}')
        if self.mode not in MODES:
            bad('mode', f'must be one of {", ".join(MODES)}')
        for key in ('top_k', 'relative_window', 'temporal_consistency', 'max_candidates', 'geometric_min_inliers'):
            if getattr(self, key) < 1:
                bad(key, 'must be >= 1')
        for key in ('exclusion_time_s', 'exclusion_frames', 'relative_score', 'consistency_tolerance',
                    'consistency_max_gap_s', 'nms_radius', 'keyframe_min_time_s', 'keyframe_min_distance_m'):
            value = getattr(self, key)
            if value < 0 or (isinstance(value, float) and not math.isfinite(value)):
                bad(key, 'must be a finite value >= 0')
        if not -1.0 <= self.min_score <= 1.0:
            bad('min_score', 'a cosine similarity threshold must be in [-1, 1]')
        if not -1.0 <= self.keyframe_max_similarity <= 1.0:
            bad('keyframe_max_similarity', 'must be in [-1, 1] (1 = off)')
        if self.geometric_min_inliers < 8:
            bad('geometric_min_inliers', 'must be >= 8')
        if not 0.0 < self.geometric_ratio <= 1.0:
            bad('geometric_ratio', 'must be in (0, 1]')
        if self.geometric_ransac_px <= 0:
            bad('geometric_ransac_px', 'must be > 0')
        if self.geometric_working_side < 32:
            bad('geometric_working_side', 'must be >= 32')
        if self.geometric_features not in FEATURES:
            bad('geometric_features', f'must be one of {", ".join(FEATURES)}')
        if self.max_candidates > self.top_k:
            bad('max_candidates', f'cannot exceed top_k ({self.top_k})')
        if self.mode == 'slam' and self.exclusion_time_s == 0 and self.exclusion_frames == 0:
            bad('exclusion_frames', 'slam mode needs an exclusion window (exclusion_time_s or exclusion_frames > 0): '
                                    'without one every keyframe matches its own predecessor')
        if not (self.false_alarm_rate == 0.0 or 0.0 < self.false_alarm_rate <= 0.5) or \
                not math.isfinite(self.false_alarm_rate):
            bad('false_alarm_rate', 'must be 0 (off) or in (0, 0.5] (a probability per query, e.g. 0.001)')
        if not 10 <= self.calibration_k <= 1000:
            bad('calibration_k', 'must be in [10, 1000]')
        if not 0 <= self.calibration_radius <= 1000:
            bad('calibration_radius', 'must be in [0, 1000]')
        if not 2 <= self.calibration_min_samples < self.calibration_k:
            bad('calibration_min_samples', f'must be in [2, calibration_k - 1] = [2, {self.calibration_k - 1}]')
        if not 1 <= self.sequence_length <= 1000:
            bad('sequence_length', 'must be in [1, 1000] (1 = single keyframes)')
        if not 1 <= self.sequence_seeds <= 100:
            bad('sequence_seeds', 'must be in [1, 100]')
        if not (math.isfinite(self.sequence_min_speed) and 0.1 <= self.sequence_min_speed <= 1.0):
            bad('sequence_min_speed', 'must be in [0.1, 1.0]')
        if not (math.isfinite(self.sequence_max_speed) and 1.0 <= self.sequence_max_speed <= 10.0):
            bad('sequence_max_speed', 'must be in [1.0, 10.0]')
        if not 1 <= self.sequence_speeds <= 15:
            bad('sequence_speeds', 'must be in [1, 15]')
        if not (math.isfinite(self.sequence_max_gap_s) and 0.0 < self.sequence_max_gap_s <= 3600.0):
            bad('sequence_max_gap_s', 'must be in (0, 3600] seconds')
        if self.sequence_alignment not in ALIGNMENTS:
            bad('sequence_alignment', f'must be one of {", ".join(ALIGNMENTS)}')

    @property
    def calibrated(self) -> bool:
        return self.false_alarm_rate > 0

    @property
    def sequences(self) -> bool:
        """Whether the sequence stage decides (it needs the calibrated threshold)."""
        return self.calibrated and self.sequence_length > 1

    @property
    def speeds(self) -> tuple[float, ...]:
        """The relative speeds the sequence stage tries: evenly in log (1.0 among them if odd and symmetric)."""
        lo, hi, count = self.sequence_min_speed, self.sequence_max_speed, self.sequence_speeds
        if count == 1 or math.isclose(lo, hi):
            return (math.sqrt(lo * hi),)
        return tuple(float(v) for v in np.geomspace(lo, hi, count))

    def warnings(self) -> list[str]:
        """List the settings under which the thresholds cannot keep false loops out (for start-up logs)."""
        out = []
        if not self.calibrated and self.min_score <= 0 and self.relative_score <= 0:
            out.append(f'no threshold is active (false_alarm_rate 0 = calibration off, min_score {self.min_score:g} '
                       '<= 0, relative_score 0): every best match outside the exclusion window can be published; '
                       'set false_alarm_rate (e.g. 0.001)')
        elif not self.calibrated and self.min_score <= 0:
            out.append(f'calibration is off and min_score is {self.min_score:g}: only relative_score filters matches')
        if not self.calibrated and self.sequence_length > 1:
            out.append('false_alarm_rate 0 switches the sequence stage off: every keyframe decides alone')
        return out
