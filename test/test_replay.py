"""``boq-vpr replay`` over real DDS.

A bag's messages arrive unchanged and in order on (remapped)
topics, ``/clock`` follows the bag time, and topics recorded while playing land in a new bag.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from boq_vpr.inputs import bags
from boq_vpr.inputs.images import list_images, load_image

T0 = 1_700_000_000 * 1_000_000_000
DT = 50_000_000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def domain_id() -> int:
    """Return a ROS domain per test run (pid); congruent 3 mod 4 so that it never meets the node tests' ones."""
    return 23 + (os.getpid() % 45) * 4


@pytest.fixture(scope='module')
def ros1_bag(heldout_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp('replay') / 'frames.bag'
    frames = [load_image(f) for f in list_images(heldout_dir / 'winter')[500:512]]
    with bags.BagWriter(path, 'ros1') as w:
        for i, rgb in enumerate(frames):
            w.add_image('/camera/image_raw', rgb, T0 + i * DT)
            w.add_pose('/odom', T0 + i * DT + 1, (float(i), 0.0, 0.0), msgtype=bags.ODOMETRY)
    return path, frames


def test_replay_publishes_the_bag_and_records(ros1_bag, tmp_path):
    import rclpy
    from nav_msgs.msg import Odometry
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    path, frames = ros1_bag
    domain = domain_id()
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain)
    node = Node('replay_listener', context=ctx)
    got: dict[str, list] = {'image': [], 'odom': [], 'clock': []}
    lock = threading.Lock()

    def keep(box):
        def cb(msg):
            with lock:
                got[box].append(msg)
        return cb
    node.create_subscription(Image, '/image', keep('image'), 100)
    node.create_subscription(Odometry, '/odom', keep('odom'), 100)
    node.create_subscription(Clock, '/clock', keep('clock'), 1000)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    rec = tmp_path / 'rec'
    try:
        proc = subprocess.run(
            [sys.executable, '-m', 'boq_vpr.cli', 'replay', str(path), '--rate', '2', '--clock',
             '--remap', '/camera/image_raw:=/image', '--domain-id', str(domain), '--wait-subscribers', '60',
             '--record', '/image', '--record', '/odom', '--record-out', str(rec), '--linger', '3', '--quiet', '1',
             '--report', str(tmp_path / 'report.json')],
            cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        end = time.monotonic() + 10
        while time.monotonic() < end and (len(got['image']) < len(frames) or len(got['odom']) < len(frames)):
            time.sleep(0.1)
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
        spinner.join(timeout=5)
    assert '/camera/image_raw: 12 messages' in proc.stdout
    # every image arrives, in order, with the pixels and stamps of the bag (ROS 1 converted to ROS 2)
    assert len(got['image']) == len(frames)
    for msg, rgb, i in zip(got['image'], frames, range(len(frames))):
        assert msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec == T0 + i * DT
        assert msg.encoding == 'rgb8'
        np.testing.assert_array_equal(np.frombuffer(bytes(msg.data), np.uint8).reshape(rgb.shape), rgb)
    assert [m.pose.pose.position.x for m in got['odom']] == [float(i) for i in range(len(frames))]
    # /clock: bag time, never backwards, within the bag's span
    clock = [c.clock.sec * 1_000_000_000 + c.clock.nanosec for c in got['clock']]
    assert clock and all(b >= a for a, b in zip(clock, clock[1:]))
    assert T0 <= clock[0] and clock[-1] <= T0 + (len(frames) - 1) * DT + 1
    # what was recorded while playing is the same data again
    recorded = list(bags.iter_images(rec, '/image'))
    assert len(recorded) == len(frames)
    for im, rgb in zip(recorded, frames):
        np.testing.assert_array_equal(im.rgb, rgb)
    assert len(bags.read_poses(rec, '/odom')) == len(frames)


def test_replay_missing_topic_is_an_error(ros1_bag, capsys):
    from boq_vpr.cli import main
    path, _ = ros1_bag
    assert main(['replay', str(path), '--topics', '/nope', '--domain-id', str(domain_id())]) == 2
    err = capsys.readouterr().err
    assert '/nope' in err and '/camera/image_raw (sensor_msgs/msg/Image, 12 messages)' in err
