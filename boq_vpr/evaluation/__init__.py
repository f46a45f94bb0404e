"""Offline evaluation: bag images -> encoder -> map database -> loop-closure detector, frame by
frame, scored against ground truth.

The same library objects as the node: ``Encoder`` (descriptors), ``MapDatabase`` (FAISS) and the
node's detect step (``FramePipeline.detect`` over ``LoopClosureDetector``) with a ``DetectorConfig``
read from the node's parameters file. Two modes:

- ``slam`` (one session): each frame goes through the detector in stamp order and loops are found
  against the session's own past outside the exclusion window;
- ``localization`` (map vs queries): a map is built from one bag (every frame a keyframe) or
  loaded, and each frame of another bag queries it.

Retrieval metrics (recall@k) come from ``MapDatabase.search`` over the keyframes the detector
could match (in slam mode: below its exclusion window); detection metrics (precision-recall curve,
AUC, recall at 100% precision, F1) from ``FrameResult.decision_score`` and ``FrameResult.best``;
the operating point from the accepted ``FrameResult.candidates``.

Modules, in the order of the data: ``frames`` (bag I/O: descriptors and ground truth, saved and
reloaded so that sweeps do not re-encode), ``params`` (the node's parameters file), ``runs`` (detector
runs), ``scoring`` (metrics, sweeps, latency), ``live`` (a live node's recording against an offline run).
"""
from .frames import (FRAMES_FORMAT, FRAMES_VERSION, GT_FORMS, Frames, ImageStore, ground_truth_for,
                     latency_summary, load_images, read_frames, sort_by_stamp)
from .live import LiveRecording, compare_live, live_as_run, read_live
from .params import detector_config, load_params, parse_overrides
from .runs import Run, build_map, map_frames_from_db, run_localization, run_slam
from .scoring import CALIBRATED_SWEEP, Scored, as_jsonable, eligible_mask, latency, score_run, sweep

__all__ = ['FRAMES_FORMAT', 'FRAMES_VERSION', 'GT_FORMS', 'Frames', 'ImageStore', 'ground_truth_for', 'latency_summary',
           'load_images', 'read_frames', 'sort_by_stamp', 'LiveRecording', 'compare_live', 'live_as_run', 'read_live',
           'detector_config', 'load_params', 'parse_overrides', 'Run', 'build_map', 'map_frames_from_db',
           'run_localization', 'run_slam', 'CALIBRATED_SWEEP', 'Scored', 'as_jsonable', 'eligible_mask', 'latency',
           'score_run', 'sweep']
