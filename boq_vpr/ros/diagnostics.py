"""What the node reports on ``/diagnostics`` (key/values and the status level), no ROS imports."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .stats import PipelineStats

COUNTERS = ('frames_received', 'frames_processed', 'frames_dropped', 'rejected', 'frames_failed', 'keyframes_added',
            'loop_closures', 'relocalizations', 'relocalizations_without_pose', 'candidates_published',
            'odom_received', 'odom_rejected', 'frames_without_pose', 'attention_failed')
WARN_WINDOW_S = 10.0   # WARN while frames were rejected or failed within this window


class Health:
    """The node's problems as ``/diagnostics`` reports them; the node owns one and keeps it current.

    ``configure_error``: why the last configure failed ('' once one succeeds); ``worker_error``: the
    last frame that failed; ``attention_error``: why ``~/attention`` is off (None while it works).
    """

    def __init__(self) -> None:
        self.configure_error = ''
        self.worker_error = ''
        self.attention_error: str | None = None
        self._problem_count = 0
        self._problem_time: float | None = None

    def recent_problems(self, total: int) -> bool:
        """Whether ``total``, the count of bad frames, grew within the last ``WARN_WINDOW_S`` seconds."""
        now = time.monotonic()
        if total != self._problem_count:
            self._problem_count, self._problem_time = total, now
        return self._problem_time is not None and now - self._problem_time < WARN_WINDOW_S


def pipeline_values(state: str, values: dict[str, Any], stats: PipelineStats, health: Health, pipeline: Any = None,
                    converter: str = '', map_path: Path | None = None) -> dict[str, str]:
    """Return the node's state, counters, latencies and detector outcomes as strings.

    ``state``: the lifecycle state; ``values``: the parameter values; ``pipeline``: the
    ``FramePipeline`` once configured (None before); ``converter``: the image converter's name;
    ``map_path``: where the map is saved (None: in memory).
    """
    counts, rejected = stats.snapshot()
    out = {'lifecycle_state': state, 'mode': values['loop_closure.mode'], 'mapping': str(values['mapping'])}
    if health.configure_error:
        out['configure_error'] = health.configure_error
    if pipeline is not None:
        enc = pipeline.encoder.describe()
        det, db = pipeline.detector, pipeline.db
        out.update({
            'backend': str(enc.get('backend', pipeline.encoder.backend.name)),
            'device': str(enc.get('device', '')), 'precision': str(enc.get('precision', '')),
            'model': pipeline.encoder.config.name, 'descriptor_dim': str(pipeline.encoder.descriptor_dim),
            'converter': converter, 'map_size': str(len(db)), 'map_path': str(map_path or ''),
            # the running session: its label, first keyframe id and size; the rest are earlier sessions
            'session': det.config.session, 'session_start_id': str(det.session_start),
            'session_keyframes': str(det.session_keyframes),
            'earlier_keyframes': str(len(db) - det.session_keyframes),
        })
    out['input_rate_hz'] = f'{stats.input_rate.rate():.2f}'
    out['processed_rate_hz'] = f'{stats.processed_rate.rate():.2f}'
    for key in COUNTERS:
        out['frames_rejected' if key == 'rejected' else key] = str(counts.get(key, 0))
    for reason, n in sorted(rejected.items()):
        out[f'rejected.{reason}'] = str(n)
    if pipeline is not None:
        # the decision of every processed frame (they add up to frames_processed)
        for outcome, n in pipeline.detector.outcome_counts.items():
            out[f'outcome.{outcome}'] = str(n)
    for key, n in sorted(counts.items()):
        if key.startswith('odom_rejected.'):
            out[key] = str(n)
    for stage, s in stats.latency.summary_ms().items():
        out[f'latency_ms.{stage}.p50'] = f'{s["p50"]:.3f}'
        out[f'latency_ms.{stage}.p99'] = f'{s["p99"]:.3f}'
    if health.worker_error:
        out['last_error'] = health.worker_error
    if health.attention_error:
        out['attention_error'] = health.attention_error
    return out


def status_of(values: dict[str, str], health: Health, worker_alive: bool) -> tuple[str, str]:
    """Return (level: ok/warn/error, message) of the node's status.

    ``values``: what ``pipeline_values`` returned; ``worker_alive``: whether the worker thread runs.
    """
    state = values['lifecycle_state']
    if state != 'active':
        if values.get('configure_error'):
            return 'error', f'{state}: configure failed: {values["configure_error"]}'
        return 'ok', f'{state}: not processing frames'
    if not worker_alive:
        return 'error', 'worker thread stopped'
    bad = int(values['frames_rejected']) + int(values['frames_failed'])
    if health.recent_problems(bad):
        return 'warn', (f'frames rejected or failed in the last {WARN_WINDOW_S:.0f} s ({values["frames_rejected"]} '
                        f'rejected, {values["frames_failed"]} failed in all); '
                        f'{values["processed_rate_hz"]} Hz processed')
    return 'ok', f'{values["processed_rate_hz"]} Hz processed, map {values["map_size"]} keyframes'
