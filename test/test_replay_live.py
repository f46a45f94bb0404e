"""The Nordland bag (summer then winter) replayed over real DDS through the running ``vpr_node``.

The node runs as a separate process, its outputs recorded by ``boq-vpr replay --record`` and scored by
``boq-vpr evaluate --live`` with the same parameters file: the live loop closures must be the
offline ones, frame for frame, unless the node dropped frames (which it counts).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys


from boq_vpr.cli import main as cli_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNT = 30


def domain_id() -> int:
    """Congruent 3 mod 4: never one of the node tests' domains; one per test run (pid)."""
    return 23 + (os.getpid() % 45) * 4


def test_live_node_matches_offline_evaluation(heldout_dir, tmp_path):
    from boq_vpr.ros.client import NodeProcess

    bag = tmp_path / 'nordland'
    assert cli_main(['make-bag', str(heldout_dir / 'summer'), str(heldout_dir / 'winter'), '--out', str(bag),
                     '--first', '200', '--count', str(COUNT), '--rate', '4', '--gap', '1']) == 0
    params = tmp_path / 'vpr.yaml'
    params.write_text('/**:\n  ros__parameters:\n'
                      '    model.name: resnet18_1024\n    encoder.backend: torch\n    encoder.device: cpu\n'
                      '    encoder.precision: fp32\n    encoder.num_threads: 2\n    diagnostics.period_sec: 0.5\n'
                      '    qos.reliability: reliable\n    qos.depth: 10\n'
                      '    loop_closure.mode: slam\n    loop_closure.exclusion_frames: 10\n'
                      '    loop_closure.exclusion_time_s: 0.0\n    loop_closure.min_score: 0.0\n'
                      '    loop_closure.false_alarm_rate: 0.0\n    loop_closure.temporal_consistency: 1\n'
                      '    loop_closure.keyframe_min_time_s: 0.0\n    loop_closure.keyframe_max_similarity: 1.0\n')
    domain = domain_id()
    node = NodeProcess(domain, params_file=params, log_path=tmp_path / 'node.log',
                       ros_args=['-r', 'image:=/camera/image_raw'])
    rec = tmp_path / 'live'
    try:
        proc = subprocess.run(
            [sys.executable, '-m', 'boq_vpr.cli', 'replay', str(bag), '--domain-id', str(domain),
             '--wait-subscribers', '180', '--record', '/vpr_node/candidates', '--record', '/vpr_node/loop_closure',
             '--record', '/diagnostics', '--record-out', str(rec), '--linger', '6', '--quiet', '3'],
            cwd=ROOT, capture_output=True, text=True, timeout=400)
    finally:
        rc = node.stop()
    log = node.log()
    assert proc.returncode == 0, proc.stdout + proc.stderr + log[-3000:]
    assert f'/camera/image_raw: {2 * COUNT} messages' in proc.stdout, proc.stdout
    assert rc == 0, log[-3000:]

    out = tmp_path / 'eval'
    assert cli_main(['evaluate', str(bag), '--live', str(rec), '--params', str(params), '--encoder-from-params',
                     '--out', str(out), '--batch-size', '1']) == 0
    m = json.loads((out / 'metrics.json').read_text())
    enc = m['setup']['encoder']
    assert (enc['model'], enc['backend'], enc['device'], enc['precision']) == ('resnet18_1024', 'torch', 'cpu', 'fp32')
    live = m['live']
    node_counts = live['node']
    processed, dropped = int(node_counts['frames_processed']), int(node_counts['frames_dropped'])
    rejected = int(node_counts['frames_rejected'])
    assert int(node_counts['frames_received']) == 2 * COUNT
    assert processed + dropped + rejected == 2 * COUNT
    cmp_ = live['comparison']
    assert live['matching']['queries_not_in_bag'] == 0 and live['matching']['matches_not_in_map'] == 0
    assert cmp_['live_accepted'] == live['messages'] == int(node_counts['loop_closures'])
    if dropped == 0 and rejected == 0:
        # same frames in, same map, same detector: the same loop closures with the same scores
        assert cmp_['same'] == cmp_['offline_accepted'] == cmp_['live_accepted'] > 0
        assert cmp_['different_match'] == cmp_['offline_only'] == cmp_['live_only'] == 0
        assert cmp_['max_score_difference'] < 1e-4
        assert live['operating_point'] == m['operating_point']
    else:
        # a dropped frame is neither a query nor a keyframe of the live map: every query that the
        # node did process still has a first candidate, and the losses are bounded by the drops
        lost = cmp_['offline_only'] + cmp_['different_match'] + cmp_['live_only']
        print(f'node dropped {dropped} and rejected {rejected} frames; {lost} queries differ from offline')
        assert cmp_['live_accepted'] >= cmp_['offline_accepted'] - dropped - rejected
    summary = (out / 'summary.md').read_text()
    assert 'Live run' in summary and 'dropped' in summary
