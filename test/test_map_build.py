"""``boq-vpr build-map``: poses CSV, append with the same model, refusals that say what to do."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from boq_vpr.cli import main
from boq_vpr.commands.common import parse_index_options
from boq_vpr.errors import ConfigError, DatasetError
from boq_vpr.inputs.poses import poses_by_file
from boq_vpr.map import MapDatabase

ARGS = ['--model', 'resnet18_1024', '--image-size', '32x64', '--backend', 'torch', '--device', 'cpu']


@pytest.fixture()
def folder(heldout_dir, tmp_path) -> Path:
    out = tmp_path / 'images'
    out.mkdir()
    for p in sorted((heldout_dir / 'summer').glob('images-*.png'))[:12]:
        shutil.copy(p, out / p.name)
    (out / 'broken.png').write_bytes(b'not a png')
    return out


def test_build_append_and_refusals(folder, tmp_path, capsys):
    names = sorted(p.name for p in folder.glob('images-*.png'))
    poses = tmp_path / 'poses.csv'
    poses.write_text('file,stamp_ns,x,y,z,qx,qy,qz,qw,frame_id\n' +
                     ''.join(f'{n},{1000 + i},{i},0,0,0,0,0,1,map\n' for i, n in enumerate(names[:10])) +
                     'gone.png,5,0,0,0,0,0,0,1,map\n')
    out = tmp_path / 'map'
    summary = tmp_path / 'summary.json'
    assert main(['build-map', str(folder), '--out', str(out), '--poses', str(poses), '--thumbnails',
                 '--session', 'day1', '--summary', str(summary), *ARGS]) == 0
    s = json.loads(summary.read_text())
    assert (s['added'], s['skipped'], s['without_pose'], s['unused_pose_rows']) == (12, 1, 2, 1)
    assert 'broken.png' in s['skipped_files'][0]['file']
    assert 'skipped' in capsys.readouterr().out
    db = MapDatabase.load(out)
    kf = db.keyframe(3)
    assert (kf.stamp_ns, kf.position, kf.orientation, kf.frame_id, kf.source, kf.session) == \
        (1003, (3.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0), 'map', names[3], 'day1')
    assert db.keyframe(11).position is None and db.thumbnail(0) is not None

    # an existing map is neither overwritten nor extended without being asked
    assert main(['build-map', str(folder), '--out', str(out), *ARGS]) == 2
    assert 'pass --append' in capsys.readouterr().err
    assert main(['build-map', str(folder), '--out', str(out), '--append', '--session', 'day2', *ARGS]) == 0
    db = MapDatabase.load(out)
    assert len(db) == 24 and db.sessions() == {'day1': 12, 'day2': 12}
    # another model is refused, naming both fingerprints
    assert main(['build-map', str(folder), '--out', str(out), '--append', '--model', 'resnet18_1024',
                 '--image-size', '64x64', '--backend', 'torch', '--device', 'cpu']) == 2
    err = capsys.readouterr().err
    assert 'model fingerprint' in err and err.count('resnet18_1024-') == 2
    assert main(['build-map', str(folder), '--out', str(out), '--overwrite', '--index-type', 'fp16', *ARGS]) == 0
    assert MapDatabase.load(out).index_type == 'fp16' and len(MapDatabase.load(out)) == 12


def test_bad_poses_and_options_say_what_is_wrong(tmp_path):
    bad = tmp_path / 'p.csv'
    bad.write_text('name,x\na.png,1\n')
    with pytest.raises(DatasetError, match='no file column'):
        poses_by_file(bad)
    bad.write_text('file,x,y,z\na.png,1,two,3\n')
    with pytest.raises(DatasetError, match=r"p\.csv:2: column y: 'two' is not a number"):
        poses_by_file(bad)
    bad.write_text('file,stamp\na.png,1.5\nb.png,\n')
    assert poses_by_file(bad)['a.png'].stamp_ns == 1_500_000_000 and poses_by_file(bad)['b.png'].stamp_ns is None
    bad.write_text('File, X, y, z\na.png, 1, 2, 3\n')   # spaces and case in the header do not matter
    assert poses_by_file(bad)['a.png'].position == (1.0, 2.0, 3.0)
    assert parse_index_options(['nlist=64', ' pq_m = 8']) == {'nlist': 64, 'pq_m': 8}
    with pytest.raises(ConfigError, match='KEY=VALUE'):
        parse_index_options(['nlist'])
    with pytest.raises(ConfigError, match='must be an integer'):
        parse_index_options(['nlist=many'])


def test_build_from_bag_with_pose_topic(heldout_dir, tmp_path, capsys):
    """A bag's image topic becomes keyframes at the header stamps.

    Poses come from the pose topic nearest in time (within --max-pose-dt), the descriptors equal
    encoding the frames directly.
    """
    from boq_vpr.inputs import bags
    from boq_vpr.commands.common import encoder_from_args
    from boq_vpr.inputs.images import list_images, load_image
    frames = [load_image(f) for f in list_images(heldout_dir / 'summer')[:8]]
    bag = tmp_path / 'run1'
    t0, dt = 1_700_000_000 * 10**9, 100_000_000
    with bags.BagWriter(bag, 'mcap') as w:
        for i, rgb in enumerate(frames):
            w.add_image('/cam/image_raw', rgb, t0 + i * dt, fmt='png')
            if i != 5:   # one image without odometry near it
                w.add_pose('/odom', t0 + i * dt + 3_000_000, (float(i), 0.5, 0.0), (0, 0, 0.6, 0.8),
                           msgtype=bags.ODOMETRY)
    out, summary = tmp_path / 'map', tmp_path / 's.json'
    assert main(['build-map', str(bag), '--out', str(out), '--pose-topic', '/odom', '--max-pose-dt', '0.02',
                 '--thumbnails', '--summary', str(summary), *ARGS]) == 0
    s = json.loads(summary.read_text())
    assert (s['added'], s['skipped'], s['without_pose'], s['topic'], s['session']) == \
        (8, 0, 1, '/cam/image_raw', 'run1')
    assert '7 images with a pose, 1 without' in capsys.readouterr().out
    db = MapDatabase.load(out)
    kf = db.keyframe(3)
    assert kf.stamp_ns == t0 + 3 * dt and kf.position == (3.0, 0.5, 0.0) and kf.orientation == (0.0, 0.0, 0.6, 0.8)
    assert db.keyframe(5).position is None and db.thumbnail(7) is not None
    assert kf.source.endswith(':/cam/image_raw#3')
    from boq_vpr.cli import build_parser
    encoder = encoder_from_args(build_parser().parse_args(['build-map', str(bag), '--out', str(out), *ARGS]))
    np.testing.assert_allclose(db.descriptors([0, 7]), encoder.encode([frames[0], frames[7]]), atol=1e-5)
    # folder-only and bag-only options are refused with the reason
    assert main(['build-map', str(bag), '--out', str(tmp_path / 'm2'), '--poses', str(summary), *ARGS]) == 2
    assert '--pose-topic' in capsys.readouterr().err
    assert main(['build-map', str(tmp_path), '--out', str(tmp_path / 'm3'), '--topic', '/x', *ARGS]) == 2
    assert 'not a bag' in capsys.readouterr().err
