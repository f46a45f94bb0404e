"""Offline evaluation of loop closures on bags, scored against ground truth.

Bag images -> encoder -> map database -> loop-closure detector, frame by frame, scored against
ground truth.

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
runs), ``scoring`` (metrics, sweeps, latency), ``live`` (a live node's recording against an offline run),
``report`` (the files ``boq-vpr evaluate`` writes: summary, plots, candidates). The benchmarks' library:
``benchmark`` (machine, memory), ``loops`` (the loop-closure drives, tables, cost and calibration of
``boq-vpr bench loops``), ``pixel_baseline``; ``metrics`` and ``plots`` are pure metrics and figures.
The names below are imported from their modules on first use.
"""
import importlib

# name -> the module of this package that defines it; imported on first use, so that importing one
# module of the package (``evaluation.loops``, ``evaluation.benchmark``) does not import them all
_EXPORTS = {
    **dict.fromkeys(('FRAMES_FORMAT', 'FRAMES_VERSION', 'GT_FORMS', 'Frames', 'ImageStore', 'ground_truth_for',
                     'load_images', 'read_frames', 'sort_by_stamp'), 'frames'),
    **dict.fromkeys(('LiveRecording', 'compare_live', 'live_as_run', 'read_live'), 'live'),
    **dict.fromkeys(('detector_config', 'load_params', 'parse_overrides'), 'params'),
    **dict.fromkeys(('Run', 'build_map', 'map_frames_from_db', 'run_localization', 'run_slam'), 'runs'),
    **dict.fromkeys(('CALIBRATED_SWEEP', 'Scored', 'as_jsonable', 'eligible_mask', 'latency', 'score_run', 'sweep'),
                    'scoring'),
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(f'.{module}', __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
