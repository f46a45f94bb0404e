"""vpr_node as a separate process over real DDS (rclpy + Fast DDS), fed with real Nordland frames.

Two nodes, each in its own ROS domain: a slam node (raw images + odometry, params from a YAML
file) and a localization node (compressed images, the slam node's saved map, attention output).
The network is the small ``resnet18_1024`` with BatchNorm statistics adapted to Nordland frames
(a deterministic weight file made here), so that different places get different descriptors.
Frames are published one at a time and the test waits until the node has accounted for each one
(diagnostics counters), except in the load test, which floods the node on purpose.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('rclpy', reason='needs rclpy (pip install boq_vpr[ros] or a ROS 2 install)')
psutil = pytest.importorskip('psutil', reason='needs psutil (pip install boq_vpr[test])')
yaml = pytest.importorskip('yaml')

from boq_vpr.ros.client import (NodeProcess, VprClient, candidate_rows, compressed_msg,  # noqa: E402
                                image_msg, odom_msg)
from boq_vpr.values import NS_PER_S  # noqa: E402

pytestmark = [pytest.mark.ros]

MODEL = 'resnet18_1024'
EXCLUSION_S = 8.0          # loop_closure.exclusion_time_s of both nodes
DISTINCT_MAX_SIM = 0.99    # frames used as different places are at most this similar to each other
MIN_SCORE = 0.995          # between that and an exact revisit (cosine 1.0)
STARTUP_S = 240.0          # generous: the CI machine may be busy
STEP_S = 60.0              # one frame through a busy node


# ----------------------------------------------------------------------------------------------
# shared data: a weight file and a set of mutually distinct Nordland places

@dataclass
class World:
    weights: Path
    frames: dict[str, list[np.ndarray]]   # group -> images (every image a different place)


def _adapt_batchnorm(path: Path, images: list[np.ndarray]) -> None:
    """Seeded random ResNet18-BoQ with BatchNorm statistics measured on ``images``, saved as a state dict."""
    import torch
    from boq_vpr.models import build_model, get_config
    from boq_vpr.models.vpr import RANDOM_SEED
    from boq_vpr.preprocessing import Preprocessor
    config = get_config(MODEL)
    model = build_model(config, seed=RANDOM_SEED)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batch
    with torch.no_grad():
        model(Preprocessor(config.image_size).batch(images))
    torch.save(model.eval().state_dict(), path)


@pytest.fixture(scope='module')
def world(heldout_dir: Path, tmp_path_factory) -> World:
    from boq_vpr.encoder import Encoder
    from boq_vpr.inputs.images import list_images, load_image
    files = list_images(heldout_dir / 'summer')
    weights = tmp_path_factory.mktemp('weights') / 'resnet18_1024_nordland_bn.pth'
    _adapt_batchnorm(weights, [load_image(f) for f in files[5::40]])
    encoder = Encoder(MODEL, weights=weights, backend='torch', device='cpu', precision='fp32')
    # greedy choice of places the model tells apart: each new one at most DISTINCT_MAX_SIM to all taken
    candidates = [load_image(f) for f in files[10::12]]
    desc = encoder.encode(candidates)
    taken: list[int] = []
    for i in range(len(candidates)):
        if candidates[i].mean() < 40:  # tunnels and night: too dark to be a place
            continue
        if not taken or float((desc[taken] @ desc[i]).max()) <= DISTINCT_MAX_SIM:
            taken.append(i)
    sizes = {'revisit': 10, 'map': 6, 'anchor': 4, 'load': 8}   # anchors: one per test that needs one
    assert len(taken) >= sum(sizes.values()), f'only {len(taken)} distinct places found'
    frames, k = {}, 0
    for name, n in sizes.items():
        frames[name] = [candidates[i] for i in taken[k:k + n]]
        k += n
    return World(weights, frames)


class StampClock:
    """Increasing header stamps (nanoseconds), shared by every test of a node."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self.ns = int(start_s * NS_PER_S)

    def advance(self, seconds: float) -> int:
        self.ns += int(round(seconds * NS_PER_S))
        return self.ns


@dataclass
class Session:
    proc: NodeProcess
    client: VprClient
    folder: Path
    clock: StampClock = field(default_factory=StampClock)
    sent: int = 0

    def diag(self) -> dict[str, str]:
        d = self.client.diagnostics()
        assert d is not None, 'no diagnostics from the node'
        return d

    def n(self, key: str) -> int:
        return int(self.diag().get(key, 0))

    def settle(self, timeout: float = STEP_S, expect_all: bool = True) -> dict[str, str]:
        """Wait until every received frame is processed, dropped, rejected or failed.

        With ``expect_all``, also until every frame sent has been received.
        """
        def done(d: dict[str, str]) -> bool:
            got = int(d['frames_received'])
            accounted = sum(int(d[k]) for k in ('frames_processed', 'frames_dropped', 'frames_rejected',
                                                 'frames_failed'))
            return got == accounted and (got == self.sent or not expect_all)
        d = self.client.wait_for_diagnostics(done, timeout)
        assert d is not None, f'node did not account for its frames within {timeout} s: {self.diag()}\n' + \
            self.proc.log()[-3000:]
        return d

    def send(self, msg, settle: bool = True) -> None:
        pub = self.client.pub_compressed if hasattr(msg, 'format') else self.client.pub_image
        pub.publish(msg)
        self.sent += 1
        if settle:
            self.settle()

    def loops_for(self, query_stamp_ns: int, timeout: float = 10.0) -> list:
        q = query_stamp_ns / NS_PER_S
        self.client.wait_until(lambda: any(abs(r.msg.data[0] - q) < 1e-6 for r in self.client.inbox.loop_closures),
                               timeout)
        return [r for r in self.client.inbox.loop_closures if abs(r.msg.data[0] - q) < 1e-6]

    def relocalizations_for(self, query_stamp_ns: int, timeout: float = 10.0) -> list:
        """~/relocalization messages stamped with the query's stamp."""
        def mine(r) -> bool:
            st = r.msg.header.stamp
            return st.sec * NS_PER_S + st.nanosec == query_stamp_ns
        self.client.wait_until(lambda: any(mine(r) for r in self.client.inbox.relocalizations), timeout)
        return [r for r in self.client.inbox.relocalizations if mine(r)]

    def candidates_for(self, query_stamp_ns: int, timeout: float = 10.0) -> list[dict]:
        q = round(query_stamp_ns / NS_PER_S, 6)

        def rows() -> list[dict]:
            return [row for r in self.client.inbox.candidates for row in candidate_rows(r.msg)
                    if round(row['query_stamp'], 6) == q]
        self.client.wait_until(lambda: bool(rows()), timeout)
        return rows()


def _write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump({'/**': {'ros__parameters': params}}, sort_keys=False))
    return path


def _base_params(world: World, folder: Path) -> dict:
    return {
        'model.name': MODEL, 'model.weights': str(world.weights), 'encoder.backend': 'torch',
        'encoder.device': 'cpu', 'encoder.precision': 'fp32', 'encoder.num_threads': 1,
        'qos.reliability': 'reliable', 'qos.depth': 50, 'diagnostics.period_sec': 0.2, 'log_throttle_sec': 1.0,
        'map.path': str(folder / 'map'),
        'loop_closure.exclusion_time_s': EXCLUSION_S, 'loop_closure.exclusion_frames': 0,
        'loop_closure.min_score': MIN_SCORE, 'loop_closure.top_k': 5,
        # the synthetic scenes test single revisits: calibration, consistency and keyframe selection off
        'loop_closure.false_alarm_rate': 0.0, 'loop_closure.temporal_consistency': 1,
        'loop_closure.keyframe_min_time_s': 0.0, 'loop_closure.keyframe_max_similarity': 1.0,
    }


def _domain(offset: int) -> int:
    return 20 + (os.getpid() % 35) * 6 + offset   # 20..229, unique per test run (pid)


def _start(folder: Path, params: dict, domain: int, compressed: bool = False) -> Session:
    params_file = _write_params(folder / 'params.yaml', params)
    proc = NodeProcess(domain, params_file=params_file, log_path=folder / 'node.log')
    client = VprClient(domain)
    if not client.wait_for_node(STARTUP_S, compressed=compressed):
        log = proc.log()
        client.close()
        proc.stop()
        pytest.fail(f'vpr_node did not come up within {STARTUP_S} s (alive: {proc.alive()}):\n{log[-5000:]}')
    return Session(proc, client, folder)


@pytest.fixture(scope='module')
def slam(world: World, tmp_path_factory):
    folder = tmp_path_factory.mktemp('slam_node')
    params = _base_params(world, folder) | {'use_odom': True, 'odom_max_time_diff_sec': 0.05,
                                            'map.save_on_shutdown': True}
    s = _start(folder, params, _domain(0))
    yield s
    s.client.close()
    s.proc.stop()


def _publish_odom(s: Session, stamps_positions: list[tuple[int, tuple]]) -> None:
    before = s.n('odom_received')
    for stamp, pos in stamps_positions:
        s.client.pub_odom.publish(odom_msg(stamp, pos))
        time.sleep(0.005)
    d = s.client.wait_for_diagnostics(lambda d: int(d['odom_received']) >= before + len(stamps_positions), STEP_S)
    assert d is not None, 'odometry not received'


def _pos(stamp_ns: int, lane: float) -> tuple[float, float, float]:
    """Odometry of the tests: x is the stamp in seconds, y tells the traversal apart."""
    return (stamp_ns / NS_PER_S, lane, 0.0)


# ----------------------------------------------------------------------------------------------
# slam node

def test_parameters_come_from_the_params_file_and_are_validated_on_set(slam: Session, world: World):
    d = slam.diag()
    assert d['model'] == MODEL and d['backend'] == 'torch' and d['precision'] == 'fp32'
    assert d['mode'] == 'slam' and d['map_path'] == str(slam.folder / 'map')
    names = ['model.weights', 'loop_closure.exclusion_time_s', 'loop_closure.min_score', 'qos.reliability',
             'diagnostics.period_sec', 'use_odom']
    values = slam.client.get_parameters(names)
    assert values == {'model.weights': str(world.weights), 'loop_closure.exclusion_time_s': EXCLUSION_S,
                      'loop_closure.min_score': MIN_SCORE, 'qos.reliability': 'reliable',
                      'diagnostics.period_sec': 0.2, 'use_odom': True}
    results = slam.client.set_parameters({
        'loop_closure.min_score': 5.0,         # DetectorConfig.validate: a cosine is in [-1, 1]
        'loop_closure.geometric_features': 'surf',   # not a registered feature type
        'attention.alpha': 2.0,                # outside the declared range
        'encoder.backend': 'onnxruntime',      # read-only after start-up
        'loop_closure.top_k': 'ten',           # wrong type
        'log_throttle_sec': 1.0,               # fine
    })
    assert results is not None
    for name in ('loop_closure.min_score', 'loop_closure.geometric_features', 'attention.alpha', 'encoder.backend',
                 'loop_closure.top_k'):
        assert results[name][0] is False, (name, results[name])
        assert results[name][1], f'{name}: rejection without a reason'
    assert results['log_throttle_sec'] == (True, '')
    assert slam.client.get_parameters(['loop_closure.min_score'])['loop_closure.min_score'] == MIN_SCORE
    assert slam.proc.alive()


def test_revisit_gives_loop_closures_to_the_right_frames_and_none_inside_the_exclusion_window(
        slam: Session, world: World):
    frames = world.frames['revisit']
    # first traversal, one frame per second; frame 2 is shown again 3 s after it was first seen
    # (inside the exclusion window: must not close a loop)
    first: list[tuple[int, int]] = []          # (frame index, stamp)
    for k in range(len(frames)):
        first.append((k, slam.clock.advance(1.0)))
        if k == 4:
            first.append((2, slam.clock.advance(1.0)))
    slam.clock.advance(EXCLUSION_S + 5.0)
    second = [(k, slam.clock.advance(1.0)) for k in range(len(frames))]
    _publish_odom(slam, [(t, _pos(t, 0.0)) for _, t in first] + [(t, _pos(t, 3.0)) for _, t in second])
    loops_before = len(slam.client.inbox.loop_closures)
    map_before = slam.n('map_size')

    for k, t in first:
        slam.send(image_msg(frames[k], t, 'rgb8'))
    early = [r.msg.data for r in slam.client.inbox.loop_closures[loops_before:]]
    assert early == [], f'loop closures during the first traversal (repeat inside the exclusion window): {early}'
    assert slam.n('map_size') == map_before + len(first)

    for k, t in second:    # the same places again, as bgr8 this time
        slam.send(image_msg(frames[k], t, 'bgr8'))
    stamps_of = {}
    for k, t in first:
        stamps_of.setdefault(k, []).append(t / NS_PER_S)
    for k, t in second:
        loops = slam.loops_for(t)
        assert len(loops) == 1, f'frame {k} at {t / NS_PER_S}: expected one loop closure, got {len(loops)}'
        query, match = loops[0].msg.data
        assert query == pytest.approx(t / NS_PER_S, abs=1e-6)
        assert any(match == pytest.approx(s, abs=1e-6) for s in stamps_of[k]), \
            f'frame {k}: matched stamp {match}, expected one of {stamps_of[k]}'
        assert query - match > EXCLUSION_S
    # the candidates table names its columns and agrees with ~/loop_closure
    tables = [candidate_rows(r.msg) for r in slam.client.inbox.candidates]
    by_query = {round(rows[0]['query_stamp'], 6): rows for rows in tables if rows}
    for k, t in second:
        rows = by_query[round(t / NS_PER_S, 6)]
        assert set(rows[0]) == {'query_stamp', 'match_stamp', 'match_id', 'session', 'kind', 'score', 'rank',
                                'verified', 'inliers'}
        assert rows[0]['rank'] == 0 and rows[0]['score'] >= MIN_SCORE
        assert (rows[0]['session'], rows[0]['kind']) == (0.0, 0.0)     # this session, a loop
        assert any(rows[0]['match_stamp'] == pytest.approx(s, abs=1e-6) for s in stamps_of[k])
    # loops of the running session are not relocalizations
    assert slam.client.inbox.relocalizations == []
    # ~/markers: one loop edge per loop closure, from the query (lane 3) to the match (lane 0)
    slam.client.wait_until(lambda: bool(slam.client.inbox.markers), 10.0)
    lines = slam.client.inbox.markers[-1].msg.markers[0]
    assert lines.header.frame_id == 'odom' and len(lines.points) >= 2 * len(second)
    assert lines.points[-2].y == 3.0 and lines.points[-1].y == 0.0


def test_filters_change_at_run_time_and_the_exclusion_window_still_holds(slam: Session, world: World):
    a, b, c = world.frames['load'][:3]
    t_a = slam.clock.advance(1.0)
    slam.send(image_msg(a, t_a))
    results = slam.client.set_parameters({'loop_closure.min_score': -1.0})   # accept any match
    assert results == {'loop_closure.min_score': (True, '')}
    try:
        t_b = slam.clock.advance(EXCLUSION_S + 2.0)
        slam.send(image_msg(b, t_b))
        t_c = slam.clock.advance(1.0)
        slam.send(image_msg(c, t_c))
        loops = slam.loops_for(t_c)
        assert len(loops) == 1, 'with min_score -1 every frame with a keyframe outside the window closes a loop'
        query, match = loops[0].msg.data
        assert query - match > EXCLUSION_S, f'matched {match}, inside the exclusion window of {query}'
    finally:
        assert slam.client.set_parameters({'loop_closure.min_score': MIN_SCORE}) == {
            'loop_closure.min_score': (True, '')}


def test_bad_input_is_logged_and_counted_and_good_frames_keep_working(slam: Session, world: World):
    anchor = world.frames['anchor'][0]
    t_anchor = slam.clock.advance(1.0)
    slam.send(image_msg(anchor, t_anchor))
    before = slam.diag()
    good = image_msg(anchor, slam.clock.advance(1.0))
    h, w = anchor.shape[:2]

    def bad(**fields):
        msg = image_msg(anchor, slam.clock.advance(0.1))
        for k, v in fields.items():
            setattr(msg, k, v)
        return msg
    cases = {
        'wrong_step': bad(step=w * 3 + 7),                                   # data is w*3*h, tightly packed
        'truncated_data': bad(data=bytes(w * 3 * h // 2)),
        'unknown_encoding': bad(encoding='rgb9'),
        'empty_image': bad(height=0, width=0, step=0, data=b''),
        'stamp_out_of_order': image_msg(anchor, t_anchor - NS_PER_S),        # older than the last frame
    }
    slam.send(good)
    for msg in cases.values():
        slam.send(msg)
    # a revisit of the anchor, outside the exclusion window: still closes the loop
    t_revisit = slam.clock.advance(EXCLUSION_S + 2.0)
    slam.send(image_msg(anchor, t_revisit, 'rgba8'))
    loops = slam.loops_for(t_revisit)
    assert len(loops) == 1 and loops[0].msg.data[1] in (pytest.approx(t_anchor / NS_PER_S),
                                                        pytest.approx(good.header.stamp.sec + good.header.stamp.nanosec
                                                                      / NS_PER_S))
    after = slam.diag()
    for reason in cases:
        key = f'rejected.{reason}'
        assert int(after.get(key, 0)) - int(before.get(key, 0)) == 1, (key, after.get(key))
    assert int(after['frames_rejected']) - int(before['frames_rejected']) == len(cases)
    assert int(after['frames_processed']) - int(before['frames_processed']) == 2
    assert after['_level'] == '1' and 'rejected' in after['_message']      # WARN on /diagnostics
    log = slam.proc.log()
    for reason in cases:
        assert f'rejected frame [{reason}]' in log, f'no warning logged for {reason}'
    assert slam.proc.alive()


@pytest.fixture(scope='module')
def saved_map(slam: Session, world: World, tmp_path_factory):
    """Return a map saved by the slam node (~/save_map), copied aside: frame index -> (stamp, position)."""
    frames = world.frames['map']
    stamps = [slam.clock.advance(1.0) for _ in frames]
    _publish_odom(slam, [(t, _pos(t, 7.0)) for t in stamps])
    for img, t in zip(frames, stamps):
        slam.send(image_msg(img, t))
    response = slam.client.save_map()
    assert response is not None and response.success, response
    copy = tmp_path_factory.mktemp('saved') / 'map'
    shutil.copytree(slam.folder / 'map', copy)
    return copy, {k: (t, _pos(t, 7.0)) for k, t in enumerate(stamps)}, int(slam.n('map_size'))


def test_services_save_set_mapping_and_clear(slam: Session, world: World, saved_map):
    from boq_vpr.map import MapDatabase
    path, _, size = saved_map
    reloaded = MapDatabase.load(path)
    assert len(reloaded) == size > 0
    frames = world.frames['anchor']

    assert slam.client.set_mapping(False).success
    n0 = slam.n('map_size')
    slam.send(image_msg(frames[1], slam.clock.advance(1.0)))
    assert slam.n('map_size') == n0, 'mapping off: the frame must not join the map'
    assert slam.client.get_parameters(['mapping'])['mapping'] is False
    assert slam.client.set_mapping(True).success
    slam.send(image_msg(frames[2], slam.clock.advance(1.0)))
    assert slam.client.wait_for_diagnostics(lambda d: int(d['map_size']) == n0 + 1, 10.0) is not None

    response = slam.client.clear_map()
    assert response.success and f'{n0 + 1} keyframes' in response.message
    assert slam.client.wait_for_diagnostics(lambda d: d['map_size'] == '0', 10.0) is not None
    # after clearing, the same place is new again: no loop closure
    t = slam.clock.advance(EXCLUSION_S + 2.0)
    slam.send(image_msg(frames[2], t))
    assert slam.loops_for(t, timeout=2.0) == []
    assert slam.n('map_size') == 1


def test_flooding_counts_drops_keeps_memory_bounded_and_still_publishes(slam: Session, world: World):
    proc = psutil.Process(slam.proc.pid)
    anchor = world.frames['anchor'][3]
    t_anchor = slam.clock.advance(1.0)
    slam.send(image_msg(anchor, t_anchor))
    before = slam.diag()
    frames = world.frames['load']
    rss = []
    for _ in range(2):
        sent0 = slam.sent
        for i in range(150):   # far faster than the node encodes
            slam.send(image_msg(frames[i % len(frames)], slam.clock.advance(0.02)), settle=False)
            time.sleep(0.002)
        slam.settle(expect_all=False)
        assert slam.sent - sent0 == 150
        rss.append(proc.memory_info().rss)
    # a status in which every frame received so far is accounted for (DDS may still be delivering
    # part of the flood: frames sent are not counted on)
    after = slam.settle(expect_all=False)
    dropped = int(after['frames_dropped']) - int(before['frames_dropped'])
    processed = int(after['frames_processed']) - int(before['frames_processed'])
    received = int(after['frames_received']) - int(before['frames_received'])
    assert dropped > 0, f'no drops counted ({processed} processed of {received})'
    assert received == processed + dropped + int(after['frames_rejected']) - int(before['frames_rejected'])
    assert 0 < processed < received
    # every processed frame has exactly one detector outcome on /diagnostics
    outcomes = {k: int(v) for k, v in after.items() if k.startswith('outcome.')}
    assert 'outcome.accepted' in outcomes and 'outcome.not_consistent' in outcomes
    assert sum(outcomes.values()) == int(after['frames_processed'])
    growth_mib = (rss[1] - rss[0]) / 2 ** 20
    assert growth_mib < 200, f'memory grew {growth_mib:.0f} MiB over the second flood'
    # still alive and publishing: the anchor revisited closes a loop. It is the newest frame, so the
    # node processes it whatever it drops of the flood still in flight.
    t = slam.clock.advance(EXCLUSION_S + 2.0)
    slam.send(image_msg(anchor, t), settle=False)
    loops = slam.loops_for(t, timeout=STEP_S)
    slam.sent = -1   # how much of the flood DDS delivered is not known: later tests cannot settle on it
    assert len(loops) == 1 and loops[0].msg.data[1] == pytest.approx(t_anchor / NS_PER_S)
    assert 'latency_ms.total.p50' in after and float(after['latency_ms.encode.p50']) > 0


# ----------------------------------------------------------------------------------------------
# localization node: compressed input, the saved map, attention

@pytest.fixture(scope='module')
def localization(world: World, saved_map, tmp_path_factory):
    folder = tmp_path_factory.mktemp('localization_node')
    path, _, _ = saved_map
    params = _base_params(world, folder) | {
        'image_transport': 'compressed', 'loop_closure.mode': 'localization', 'map.path': str(path),
        'attention.enable': True, 'attention.every_n': 1, 'attention.queries': [0, 3]}
    s = _start(folder, params, _domain(1), compressed=True)
    yield s
    s.client.close()
    s.proc.stop()


def test_saved_map_reloads_for_localization(localization: Session, world: World, saved_map):
    _, saved, size = saved_map
    d = localization.diag()
    assert d['mode'] == 'localization' and int(d['map_size']) == size
    for k, img in enumerate(world.frames['map']):
        t = localization.clock.advance(1.0)
        localization.send(compressed_msg(img, t, 'png'))
        # a relocalization: the pose stored with the matched keyframe, in its frame, at the query's stamp
        relocs = localization.relocalizations_for(t)
        assert len(relocs) == 1, f'map frame {k}: {len(relocs)} relocalizations'
        msg = relocs[0].msg
        assert msg.header.frame_id == 'odom'
        assert (msg.pose.pose.position.x, msg.pose.pose.position.y) == pytest.approx(saved[k][1][:2])
        cov = np.asarray(msg.pose.covariance).reshape(6, 6)
        # the keyframes were stored 1 s (1 m of odometry x) apart: one keyframe step as the deviation
        assert cov[0, 0] == pytest.approx(1.0) and cov[5, 5] == pytest.approx(0.25)   # orientation known
        rows = localization.candidates_for(t)
        assert rows[0]['match_stamp'] == pytest.approx(saved[k][0] / NS_PER_S, abs=1e-6)
        assert (rows[0]['session'], rows[0]['kind']) == (1.0, 1.0)    # an earlier session, a relocalization
    assert localization.client.inbox.loop_closures == [], 'localization mode publishes no ~/loop_closure'
    assert localization.n('map_size') == size, 'localization must not change the map'
    response = localization.client.set_mapping(True)
    assert response is not None and not response.success and 'localization' in response.message
    response = localization.client.clear_map()
    assert response is not None and not response.success and 'read-only' in response.message
    assert localization.n('map_size') == size


def test_corrupt_compressed_images_are_rejected(localization: Session, world: World):
    img = world.frames['map'][0]
    good = compressed_msg(img, localization.clock.advance(1.0), 'jpeg')
    before = localization.diag()

    def variant(data: bytes, fmt: str = 'jpeg'):
        msg = compressed_msg(img, localization.clock.advance(0.1), fmt)
        msg.format = fmt
        msg.data = data
        return msg
    jpeg = bytes(good.data)
    localization.send(variant(jpeg[:len(jpeg) // 2]))                             # truncated JPEG
    localization.send(variant(bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8))))  # garbage
    localization.send(variant(b'', 'png'))                                          # no data
    t = localization.clock.advance(1.0)
    localization.send(compressed_msg(img, t, 'jpeg'))                               # a good JPEG after
    after = localization.diag()
    assert int(after.get('rejected.corrupt_compressed', 0)) - int(before.get('rejected.corrupt_compressed', 0)) == 2
    assert int(after.get('rejected.empty_image', 0)) - int(before.get('rejected.empty_image', 0)) == 1
    relocs = localization.relocalizations_for(t)
    assert len(relocs) == 1, 'a good JPEG after corrupt ones must still localize'
    log = localization.proc.log()
    assert 'rejected frame [corrupt_compressed]' in log and 'rejected frame [empty_image]' in log


def test_attention_overlay_is_published(localization: Session, world: World):
    localization.send(compressed_msg(world.frames['map'][1], localization.clock.advance(1.0), 'png'))
    assert localization.client.wait_until(lambda: bool(localization.client.inbox.attention), 20.0)
    msg = localization.client.inbox.attention[-1].msg
    h, w = world.frames['map'][0].shape[:2]
    assert (msg.height, msg.width, msg.encoding, msg.step) == (h, 2 * w, 'rgb8', 2 * w * 3)
    overlay = np.frombuffer(bytes(msg.data), np.uint8).reshape(h, 2 * w, 3)
    assert overlay[:, :w].std() > 0 and not np.array_equal(overlay[:, :w], overlay[:, w:])
    # a block the model does not have is refused (resnet18_1024 has 2 BoQ blocks)
    ok, reason = localization.client.set_parameters({'attention.block': 5})['attention.block']
    assert not ok and 'BoQ blocks' in reason
    assert localization.client.set_parameters({'attention.block': -2})['attention.block'] == (True, '')


# ----------------------------------------------------------------------------------------------
# a slam session beside an earlier session's map, sim time restarting at 0

@pytest.fixture(scope='module')
def resumed(world: World, saved_map, tmp_path_factory):
    folder = tmp_path_factory.mktemp('resumed_node')
    path, _, _ = saved_map
    shutil.copytree(path, folder / 'map')       # the earlier session's map (stamps from 1000 s on, label '')
    params = _base_params(world, folder) | {'use_odom': True, 'odom_max_time_diff_sec': 0.05,
                                            'map.save_on_shutdown': False}
    s = _start(folder, params, _domain(3))
    s.clock = StampClock(start_s=0.0)           # sim time restarted: every stamp before the loaded map's
    yield s
    s.client.close()
    s.proc.stop()


def test_a_resumed_session_relocalizes_into_the_old_map_and_closes_its_own_loops(resumed: Session, world: World,
                                                                                 saved_map):
    _, saved, size = saved_map
    d = resumed.diag()
    assert d['earlier_keyframes'] == str(size) and d['session_keyframes'] == '0'
    new_places = world.frames['load'][3:]          # not in the earlier session's map
    first = [resumed.clock.advance(1.0) for _ in new_places]
    resumed.clock.advance(EXCLUSION_S + 2.0)
    again = [resumed.clock.advance(1.0) for _ in new_places]
    old = [resumed.clock.advance(1.0) for _ in world.frames['map']]
    _publish_odom(resumed, [(t, _pos(t, 9.0)) for t in first + again + old])
    for img, t in zip(new_places, first):
        resumed.send(image_msg(img, t))
    assert resumed.client.inbox.loop_closures == [] and resumed.client.inbox.relocalizations == []
    # revisits of this session's places: loops on ~/loop_closure, exactly as with an empty map
    for img, t, t_first in zip(new_places, again, first):
        resumed.send(image_msg(img, t))
        loops = resumed.loops_for(t)
        assert len(loops) == 1 and loops[0].msg.data[1] == pytest.approx(t_first / NS_PER_S, abs=1e-6), \
            f'loop at {t / NS_PER_S}: {[r.msg.data for r in loops]}'
        assert resumed.candidates_for(t)[0]['kind'] == 0.0
    assert resumed.client.inbox.relocalizations == []
    # places of the earlier session: relocalizations (the old pose, lane 7), never loops
    loops_before = len(resumed.client.inbox.loop_closures)
    for k, (img, t) in enumerate(zip(world.frames['map'], old)):
        resumed.send(image_msg(img, t))
        relocs = resumed.relocalizations_for(t)
        assert len(relocs) == 1, f'old place {k}: {len(relocs)} relocalizations'
        pose = relocs[0].msg.pose.pose
        assert (pose.position.x, pose.position.y) == pytest.approx(saved[k][1][:2])
        rows = resumed.candidates_for(t)
        assert (rows[0]['session'], rows[0]['kind']) == (1.0, 1.0)
    assert len(resumed.client.inbox.loop_closures) == loops_before, 'an old-map match went out as a loop'
    d = resumed.diag()
    assert int(d['loop_closures']) == len(new_places) and int(d['relocalizations']) == len(world.frames['map'])
    assert d['session_keyframes'] == str(len(first + again + old)) and d['earlier_keyframes'] == str(size)
    # markers draw this session's loops only (lane 9 to lane 9, the odometry frame)
    lines = resumed.client.inbox.markers[-1].msg.markers[0]
    assert lines.header.frame_id == 'odom' and len(lines.points) == 2 * len(new_places)
    assert {p.y for p in lines.points} == {9.0}


# ----------------------------------------------------------------------------------------------
# the lifecycle

def _start_unconfigured(folder: Path, params: dict, domain: int) -> Session:
    proc = NodeProcess(domain, params_file=_write_params(folder / 'params.yaml', params), log_path=folder / 'node.log')
    client = VprClient(domain)
    ok = client.wait_until(lambda: client.srv_get_state.service_is_ready() and client.diagnostics() is not None,
                           STARTUP_S, 0.2)
    if not ok:
        client.close()
        proc.stop()
        pytest.fail(f'vpr_node did not come up within {STARTUP_S} s:\n{proc.log()[-5000:]}')
    return Session(proc, client, folder)


def test_lifecycle_transitions_drive_the_node_and_shutdown_saves_the_map(world: World, tmp_path: Path):
    from boq_vpr.map import MapDatabase
    (tmp_path / 'ok').mkdir()
    (tmp_path / 'bad').mkdir()
    good = _base_params(world, tmp_path / 'ok') | {'autostart': False, 'map.save_on_shutdown': True}
    bad = _base_params(world, tmp_path / 'bad') | {'autostart': False, 'loop_closure.mode': 'localization',
                                                   'map.path': str(tmp_path / 'bad' / 'no_map')}
    s = _start_unconfigured(tmp_path / 'ok', good, _domain(4))
    try:
        # configure fails cleanly on a missing map in localization mode: unconfigured, alive, says why
        f = _start_unconfigured(tmp_path / 'bad', bad, _domain(5))
        try:
            assert f.client.lifecycle_state() == 'unconfigured'
            assert f.client.change_state('configure') is False
            assert f.client.lifecycle_state() == 'unconfigured' and f.proc.alive()
            d = f.client.wait_for_diagnostics(lambda d: 'configure_error' in d, 10.0)
            assert d is not None and 'holds no map' in d['configure_error'] and d['_level'] == '2'
            assert 'cannot start' in f.proc.log() and 'holds no map' in f.proc.log()
        finally:
            f.client.close()
            f.proc.stop()

        pub = s.client.pub_image
        frames = world.frames['anchor']
        assert s.client.lifecycle_state() == 'unconfigured' and s.diag()['lifecycle_state'] == 'unconfigured'
        assert s.client.change_state('configure') is True and s.client.lifecycle_state() == 'inactive'
        assert pub.get_subscription_count() == 0, 'an inactive node does not subscribe'
        assert s.client.change_state('activate') is True and s.client.lifecycle_state() == 'active'
        assert s.client.wait_until(lambda: pub.get_subscription_count() > 0, 30.0)
        s.send(image_msg(frames[0], s.clock.advance(1.0)))
        assert s.n('frames_processed') == 1 and s.n('map_size') == 1
        assert s.client.change_state('deactivate') is True and s.client.lifecycle_state() == 'inactive'
        assert s.client.wait_until(lambda: pub.get_subscription_count() == 0, 30.0)
        pub.publish(image_msg(frames[1], s.clock.advance(1.0)))
        time.sleep(1.0)
        assert s.n('frames_received') == 1, 'an inactive node must not take frames'
        assert s.client.change_state('activate') is True
        assert s.client.wait_until(lambda: pub.get_subscription_count() > 0, 30.0)
        s.sent = 1
        s.send(image_msg(frames[2], s.clock.advance(1.0)))
        assert s.n('map_size') == 2
        assert s.client.change_state('shutdown') is True
        assert s.client.lifecycle_state() == 'finalized'
        assert 'saved the map on shutdown: 2 keyframes' in s.proc.log()
        assert len(MapDatabase.load(tmp_path / 'ok' / 'map')) == 2
    finally:
        s.client.close()
        s.proc.stop()


# ----------------------------------------------------------------------------------------------
# start-up and shutdown

def test_shutdown_saves_the_map(slam: Session):
    from boq_vpr.map import MapDatabase
    size = slam.n('map_size')
    assert slam.proc.stop() == 0
    assert 'saved the map on shutdown' in slam.proc.log()
    assert len(MapDatabase.load(slam.folder / 'map')) == size


def test_bad_configuration_stops_with_a_clear_message(world: World, tmp_path: Path):
    cases = [({'model.name': 'resnet_bogus'}, 'model.name'),
             ({'loop_closure.mode': 'localization'}, 'holds no map'),
             ({'map.path': __file__}, 'not a map directory')]
    procs = []
    for i, (params, _) in enumerate(cases):   # in parallel: each only starts and stops
        folder = tmp_path / f'case{i}'
        folder.mkdir()
        all_params = _base_params(world, folder) | params
        procs.append(NodeProcess(_domain(2), params_file=_write_params(folder / 'params.yaml', all_params),
                                 log_path=folder / 'node.log'))
    for proc, (params, message) in zip(procs, cases):
        try:
            code = proc.proc.wait(STARTUP_S)
        finally:
            proc.stop()
        log = proc.log()
        assert code == 1, (params, log[-2000:])
        assert 'cannot start' in log and message in log, (params, log[-2000:])
