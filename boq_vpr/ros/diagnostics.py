"""What the node reports on ``/diagnostics`` (key/values and the status level), no ROS imports."""
from __future__ import annotations

from typing import Any

COUNTERS = ('frames_received', 'frames_processed', 'frames_dropped', 'rejected', 'frames_failed', 'keyframes_added',
            'loop_closures', 'relocalizations', 'relocalizations_without_pose', 'candidates_published',
            'odom_received', 'odom_rejected', 'frames_without_pose', 'attention_failed')
WARN_WINDOW_S = 10.0   # WARN while frames were rejected or failed within this window


def pipeline_values(node: Any) -> dict[str, str]:
    """The node's state, counters, latencies and detector outcomes as strings."""
    counts, rejected = node.stats.snapshot()
    v = node.values
    out = {'lifecycle_state': node.state, 'mode': v['loop_closure.mode'], 'mapping': str(v['mapping'])}
    if node.last_error:
        out['configure_error'] = node.last_error
    pipeline = node.pipeline
    if pipeline is not None:
        enc = pipeline.encoder.describe()
        det, db = pipeline.detector, pipeline.db
        out.update({
            'backend': str(enc.get('backend', pipeline.encoder.backend.name)),
            'device': str(enc.get('device', '')), 'precision': str(enc.get('precision', '')),
            'model': pipeline.encoder.config.name, 'descriptor_dim': str(pipeline.encoder.descriptor_dim),
            'converter': node.converter.name, 'map_size': str(len(db)), 'map_path': str(node.map_path or ''),
            # the running session: its label, first keyframe id and size; the rest are earlier sessions
            'session': det.config.session, 'session_start_id': str(det.session_start),
            'session_keyframes': str(det.session_keyframes),
            'earlier_keyframes': str(len(db) - det.session_keyframes),
        })
    out['input_rate_hz'] = f'{node.stats.input_rate.rate():.2f}'
    out['processed_rate_hz'] = f'{node.stats.processed_rate.rate():.2f}'
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
    for stage, s in node.stats.latency.summary_ms().items():
        out[f'latency_ms.{stage}.p50'] = f'{s["p50"]:.3f}'
        out[f'latency_ms.{stage}.p99'] = f'{s["p99"]:.3f}'
    if node._worker_error:
        out['last_error'] = node._worker_error
    if node._attention_error:
        out['attention_error'] = node._attention_error
    return out


def status_of(node: Any, values: dict[str, str]) -> tuple[str, str]:
    """(level: ok/warn/error, message) of the node's status."""
    state = values['lifecycle_state']
    if state != 'active':
        if values.get('configure_error'):
            return 'error', f'{state}: configure failed: {values["configure_error"]}'
        return 'ok', f'{state}: not processing frames'
    if node._worker is None or not node._worker.is_alive():
        return 'error', 'worker thread stopped'
    bad = int(values['frames_rejected']) + int(values['frames_failed'])
    if node._recent_problems(bad):
        return 'warn', (f'frames rejected or failed in the last {WARN_WINDOW_S:.0f} s ({values["frames_rejected"]} '
                        f'rejected, {values["frames_failed"]} failed in all); {values["processed_rate_hz"]} Hz processed')
    return 'ok', f'{values["processed_rate_hz"]} Hz processed, map {values["map_size"]} keyframes'
