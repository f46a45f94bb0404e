"""Loop-closure detection: the detector and its stages, one module each, in the order they run.

- ``keyframes``: which frames join the map (time, travelled distance, novelty);
- ``calibration``: each query's background tail and the extreme-value test behind
  ``false_alarm_rate``;
- ``sequence``: evidence along the trajectory (recent query keyframes against stretches of the map);
- ``geometric``: local features and RANSAC on keyframe images;
- ``config``: every stage's settings; ``detector``: the stages chained, one outcome per frame.
"""
from .config import MODES, DetectorConfig
from .detector import CANDIDATE_COLUMNS, KINDS, OUTCOMES, FrameResult, LoopCandidate, LoopClosureDetector

__all__ = ['MODES', 'DetectorConfig', 'LoopClosureDetector', 'LoopCandidate', 'FrameResult', 'OUTCOMES', 'KINDS',
           'CANDIDATE_COLUMNS']
