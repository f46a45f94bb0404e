"""Bag reading and writing with rosbags.

rosbag2 sqlite3 and mcap, ROS 1; raw and compressed images; pose topics; bad input (missing topic,
corrupt or truncated bags, undecodable frames, stamps out of order); make-bag on the real Nordland
frames.
"""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

from boq_vpr.inputs import bags
from boq_vpr.inputs import ground_truth as gt
from boq_vpr.cli import main as cli_main
from boq_vpr.errors import BagError
from boq_vpr.inputs.images import list_images, load_image

T0 = 1_700_000_000 * 1_000_000_000
DT = 100_000_000


@pytest.fixture(scope='module')
def frames(heldout_dir):
    files = list_images(heldout_dir / 'summer')[300:306]
    return [load_image(f) for f in files]


def _write(path, storage, frames, fmt='raw'):
    topic = '/cam/image_raw' if fmt == 'raw' else '/cam/image_raw/compressed'
    with bags.BagWriter(path, storage) as w:
        for i, rgb in enumerate(frames):
            w.add_image(topic, rgb, T0 + i * DT, fmt=fmt)
            w.add_pose('/odom', T0 + i * DT, (i, 2.0 * i, 0.5), (0, 0, 0, 1), msgtype=bags.ODOMETRY)
            w.add_pose('/pose', T0 + i * DT, (i, 0, 0), msgtype=bags.POSE_STAMPED)
            w.add_pose('/pose_cov', T0 + i * DT, (0, i, 0), msgtype=bags.POSE_COV_STAMPED)
    return topic


@pytest.mark.parametrize('storage,name', [('sqlite3', 'bag2'), ('mcap', 'bag2'), ('ros1', 'bag1.bag')])
@pytest.mark.parametrize('fmt', ['raw', 'png', 'jpeg'])
def test_roundtrip_images_and_poses(tmp_path, frames, storage, name, fmt):
    path = tmp_path / name
    topic = _write(path, storage, frames, fmt)
    topics = bags.list_topics(path)
    assert topics[topic].count == len(frames)
    assert topics[topic].msgtype == (bags.RAW_IMAGE if fmt == 'raw' else bags.COMPRESSED_IMAGE)
    report = bags.ReadReport()
    got = list(bags.iter_images(path, report=report))   # the only image topic is found by itself
    assert [g.stamp_ns for g in got] == [T0 + i * DT for i in range(len(frames))]
    assert report.yielded == len(frames) and report.out_of_order == 0 and not report.skipped
    for g, rgb in zip(got, frames):
        assert g.rgb.shape == rgb.shape and g.rgb.dtype == np.uint8
        if fmt == 'jpeg':
            assert np.abs(g.rgb.astype(int) - rgb).mean() < 3.0    # lossy, quality 95
        else:
            np.testing.assert_array_equal(g.rgb, rgb)
    odom = bags.read_poses(path, '/odom')
    assert [p.position for p in odom] == [(float(i), 2.0 * i, 0.5) for i in range(len(frames))]
    assert [p.position[0] for p in bags.read_poses(path, '/pose')] == list(range(len(frames)))
    assert [p.position[1] for p in bags.read_poses(path, '/pose_cov')] == list(range(len(frames)))


def test_ros1_messages_republished_as_ros2_cdr(tmp_path, frames):
    from rosbags.typesys import Stores, get_typestore
    path = tmp_path / 'b.bag'
    _write(path, 'ros1', frames[:2])
    store = get_typestore(Stores.ROS2_KILTED)
    seen = 0
    for topic, msgtype, _, data in bags.iter_raw_messages(path, ['/cam/image_raw']):
        msg = store.deserialize_cdr(data, msgtype)
        assert msg.height == frames[0].shape[0] and msg.encoding == 'rgb8'
        seen += 1
    assert seen == 2


def test_missing_topic_lists_the_bag_topics(tmp_path, frames):
    path = tmp_path / 'b'
    _write(path, 'sqlite3', frames[:2])
    with pytest.raises(BagError) as err:
        list(bags.iter_images(path, '/camera/nope'))
    text = str(err.value)
    assert '/camera/nope' in text and '/cam/image_raw (sensor_msgs/msg/Image, 2 messages)' in text and '/odom' in text
    with pytest.raises(BagError, match='expected image'):
        list(bags.iter_images(path, '/odom'))
    with pytest.raises(BagError, match='no topic'):
        bags.read_poses(path, '/gps')


@pytest.mark.parametrize('storage,name,keep', [('sqlite3', 'b', 20000), ('mcap', 'b', 15000), ('ros1', 'b.bag', 9000)])
def test_truncated_bag_names_the_file(tmp_path, frames, storage, name, keep):
    good = tmp_path / 'good' / name
    good.parent.mkdir()
    _write(good, storage, frames)
    bad = tmp_path / name
    if good.is_dir():
        shutil.copytree(good, bad)
        data = next(p for p in bad.iterdir() if p.suffix in ('.db3', '.mcap'))
        data.write_bytes(data.read_bytes()[:keep])
    else:
        bad.write_bytes(good.read_bytes()[:keep])
    with pytest.raises(BagError) as err:
        list(bags.iter_images(bad))
    assert str(bad) in str(err.value) and 'truncated' in str(err.value)


def test_not_a_bag_and_missing_path(tmp_path):
    junk = tmp_path / 'junk.mcap'
    junk.write_bytes(b'this is not a bag at all' * 10)
    with pytest.raises(BagError, match='junk.mcap'):
        bags.list_topics(junk)
    with pytest.raises(BagError, match='no such bag'):
        bags.list_topics(tmp_path / 'absent')
    with pytest.raises(BagError, match='exists already'):
        bags.BagWriter(junk, 'mcap')


def test_undecodable_frame_is_skipped_and_counted(tmp_path, frames, caplog):
    path = tmp_path / 'b'
    with bags.BagWriter(path, 'sqlite3') as w:
        w.add_image('/img/compressed', frames[0], T0, fmt='jpeg')
        broken = w.msg(bags.COMPRESSED_IMAGE, header=w.header(T0 + DT), format='jpeg',
                       data=np.frombuffer(b'\xff\xd8 not really a jpeg', np.uint8))
        w.write('/img/compressed', bags.COMPRESSED_IMAGE, T0 + DT, broken)
        w.add_image('/img/compressed', frames[1], T0 + 2 * DT, fmt='jpeg')
    report = bags.ReadReport()
    with caplog.at_level(logging.WARNING, logger='boq_vpr.inputs.bags'):
        got = list(bags.iter_images(path, report=report))
    assert [g.index for g in got] == [0, 2]
    assert len(report.skipped) == 1 and report.skipped[0]['index'] == 1
    assert 'message 1' in caplog.text


def test_out_of_order_and_zero_stamps_are_reported(tmp_path, frames):
    path = tmp_path / 'b'
    header_stamps = [T0, T0 + 2 * DT, T0 + DT, 0, T0 + 3 * DT + 1]   # backwards, zero, duplicate
    with bags.BagWriter(path, 'mcap') as w:
        for i, s in enumerate(header_stamps):
            _, msg = w.image_message(frames[i], s)
            w.write('/img', bags.RAW_IMAGE, T0 + i * DT + 1, msg)   # bag time always increases
    report = bags.ReadReport()
    got = list(bags.iter_images(path, report=report))
    assert [g.stamp_ns for g in got] == [T0, T0 + 2 * DT, T0 + DT, T0 + 3 * DT + 1, T0 + 3 * DT + 1]
    assert report.zero_stamps == 1 and report.out_of_order == 1 and report.duplicate_stamps == 1
    bag_time = [g.stamp_ns for g in bags.iter_images(path, stamp='bag')]
    assert bag_time == [T0 + i * DT + 1 for i in range(5)]


def test_invalid_header_stamps_are_skipped(tmp_path, frames, caplog):
    """A header whose nanosec is outside [0, 1e9) is malformed: the frame or pose is skipped, the rest read."""
    path = tmp_path / 'b'
    with bags.BagWriter(path, 'sqlite3') as w:
        for i in range(3):
            _, msg = w.image_message(frames[i], T0 + i * DT)
            pose = w.pose_message(bags.POSE_STAMPED, T0 + i * DT, (i, 0, 0))
            if i == 1:
                msg.header.stamp.nanosec = pose.header.stamp.nanosec = 1_500_000_000
            w.write('/img', bags.RAW_IMAGE, T0 + i * DT, msg)
            w.write('/pose', bags.POSE_STAMPED, T0 + i * DT, pose)
    report = bags.ReadReport()
    with caplog.at_level(logging.WARNING, logger='boq_vpr.inputs.bags'):
        got = list(bags.iter_images(path, report=report))
        poses = bags.read_poses(path, '/pose')
    assert [g.index for g in got] == [0, 2] and [s['index'] for s in report.skipped] == [1]
    assert [p.position[0] for p in poses] == [0.0, 2.0]
    assert 'nanosec' in caplog.text
    assert [g.index for g in bags.iter_images(path, stamp='bag')] == [0, 1, 2]   # the header is not read


def test_make_bag_from_nordland_with_frame_indices(tmp_path, heldout_dir, capsys):
    out = tmp_path / 'nordland'
    rc = cli_main(['make-bag', str(heldout_dir / 'summer'), str(heldout_dir / 'winter'), '--out', str(out),
                   '--first', '100', '--count', '5', '--every', '2', '--format', 'png', '--rate', '2', '--gap', '10'])
    assert rc == 0
    topics = bags.list_topics(out)
    assert topics['/camera/image_raw/compressed'].count == 10
    table = gt.load_table(bags.ground_truth_sidecar(out))
    np.testing.assert_array_equal(table.frames, [100, 102, 104, 106, 108] * 2)
    got = list(bags.iter_images(out))
    stamps = np.array([g.stamp_ns for g in got])
    np.testing.assert_array_equal(stamps, table.stamps_ns)
    assert np.all(np.diff(stamps[:5]) == 500_000_000) and stamps[5] - stamps[4] == 10 * 1_000_000_000
    # summer frame 100 and winter frame 100 are the same file name in the two folders
    summer = list_images(heldout_dir / 'summer')[100]
    np.testing.assert_array_equal(got[0].rgb, load_image(summer))
    np.testing.assert_array_equal(got[5].rgb, load_image(heldout_dir / 'winter' / summer.name))


def test_make_bag_with_poses_and_filename_frames(tmp_path, heldout_dir):
    files = list_images(heldout_dir / 'summer')[:4]
    poses = tmp_path / 'poses.csv'
    poses.write_text('file,x,y,z\n' + ''.join(f'{f.name},{10.0 * i},1.0,0.0\n' for i, f in enumerate(files)))
    out = tmp_path / 'b.bag'
    rc = cli_main(['make-bag', str(heldout_dir / 'summer'), '--out', str(out), '--storage', 'ros1', '--count', '4',
                   '--poses', str(poses), '--frame-index', 'filename'])
    assert rc == 0
    assert [p.position for p in bags.read_poses(out, '/ground_truth/pose')] == \
        [(10.0 * i, 1.0, 0.0) for i in range(4)]
    table = gt.load_table(bags.ground_truth_sidecar(out))
    np.testing.assert_array_equal(table.frames, [24010, 24020, 24030, 24040])     # images-24010.png ...
    np.testing.assert_allclose(table.positions[:, 0], [0, 10, 20, 30])
    # a CSV that misses images is refused, naming the file
    poses.write_text('file,x,y,z\n' + f'{files[0].name},0,0,0\n')
    assert cli_main(['make-bag', str(heldout_dir / 'summer'), '--out', str(tmp_path / 'c'), '--count', '2',
                     '--poses', str(poses)]) == 2
