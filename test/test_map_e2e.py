"""End to end on real images.

``boq-vpr build-map`` over the summer Nordland frames, then queries from perturbed copies of them
and from the winter frames through the loop-closure detector.

The weights are random here (no trained checkpoint in the repository), so the figures check the
pipeline, not accuracy: perturbed copies of map images must come back, winter frames must do
better than chance. The measured recall is printed (run with ``-s``).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from boq_vpr.cli import main
from boq_vpr.encoder import Encoder
from boq_vpr.inputs.images import list_images, load_image
from boq_vpr.detection import DetectorConfig, LoopClosureDetector
from boq_vpr.map import MapDatabase

MODEL = 'resnet18_1024'
SIZE = (32, 64)          # the frames' own size: with random weights, small inputs retrieve best
QUERY_STEP = 4           # every 4th frame is a query
TOL = 2                  # a match within 2 frames (20 frames of the original video) is correct


def perturb(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Make a slightly moved, zoomed, relit and noisy copy."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-1, 1), rng.uniform(1.0, 1.03))
    m[:, 2] += rng.uniform(-1, 1, 2)
    out = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    out = out.astype(np.float32) * rng.uniform(0.8, 1.2) + rng.normal(0, 4, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def frame_number(source: str) -> int:
    return int(Path(source).stem.split('-')[1])


@pytest.fixture(scope='module')
def summer_map(nordland_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('e2e') / 'summer_map'
    summary = out.parent / 'summary.json'
    poses = out.parent / 'poses.csv'
    files = list_images(nordland_dir / 'summer')
    # positions along the track: frame index as metres along x (a stand-in for GPS)
    poses.write_text('file,stamp,x,y,z\n' + ''.join(f'{p.name},{i * 0.1:.1f},{i},0,0\n' for i, p in enumerate(files)))
    rc = main(['build-map', str(nordland_dir / 'summer'), '--out', str(out), '--poses', str(poses),
               '--model', MODEL, '--image-size', f'{SIZE[0]}x{SIZE[1]}', '--backend', 'torch', '--device', 'cpu',
               '--batch-size', '64', '--session', 'summer', '--summary', str(summary)])
    assert rc == 0
    s = json.loads(summary.read_text())
    assert s['added'] == len(files) == s['keyframes'] and s['skipped'] == 0 and s['without_pose'] == 0
    return out


def test_summer_map_retrieves_perturbed_and_winter_queries(summer_map, nordland_dir):
    encoder = Encoder(MODEL, image_size=SIZE, backend='torch', device='cpu', batch_size=64)
    db = MapDatabase.load(summer_map, fingerprint=encoder.fingerprint, descriptor_dim=encoder.descriptor_dim)
    n_map = len(db)
    assert db.sessions() == {'summer': n_map}
    det = LoopClosureDetector(db, DetectorConfig(mode='localization', top_k=5, min_score=-1.0, max_candidates=1,
                                                 false_alarm_rate=0.0, temporal_consistency=1))
    rng = np.random.default_rng(0)
    report = {}
    t = 0    # one clock across both query sets (a session's stamps never go back)
    for season in ('summer-perturbed', 'winter'):
        folder = nordland_dir / season.split('-')[0]
        files = list_images(folder)[::QUERY_STEP]
        images = [load_image(p) for p in files]
        if season == 'summer-perturbed':
            images = [perturb(im, rng) for im in images]
        desc = encoder.encode(images)
        hits = {0: 0, 1: 0, TOL: 0}
        for i, (path, d) in enumerate(zip(files, desc)):
            t += 1
            r = det.process(d, t * 10**8)
            assert r.keyframe_id is None and r.best is not None and r.candidates
            error = abs(frame_number(r.best.match_keyframe.source) - frame_number(path.name)) // 10
            assert r.best.match_keyframe.position[0] == float(r.best.match_id)
            for tol in hits:
                hits[tol] += error <= tol
        n = len(files)
        report[season] = {f'recall@1_tol{t}': round(h / n, 3) for t, h in hits.items()}
        report[season]['queries'] = n
        report[season]['chance_tol2'] = round((2 * TOL + 1) / n_map, 4)
    assert len(db) == n_map   # localization never writes
    print(f'\nNordland end to end ({MODEL} random weights, {SIZE[0]}x{SIZE[1]} input, map of {n_map} summer '
          f'frames): {json.dumps(report)}')
    assert report['summer-perturbed'][f'recall@1_tol{TOL}'] >= 0.5
    # random weights: only a pipeline check against chance, not an accuracy claim
    assert report['winter'][f'recall@1_tol{TOL}'] >= 5 * report['winter']['chance_tol2']


def test_slam_over_two_traversals_closes_loops(summer_map, nordland_dir):
    """Drive part of the summer route, then the same part again (perturbed frames).

    The second pass must close loops with the first. With random weights every pair of frames has a cosine
    similarity of 0.94 or more, so only the relative score and temporal consistency separate
    revisits from look-alikes here, and imperfectly; a trained model is what makes this precise.
    """
    encoder = Encoder(MODEL, image_size=SIZE, backend='torch', device='cpu', batch_size=64)
    files = list_images(nordland_dir / 'summer')[:1600:QUERY_STEP]
    first = [load_image(p) for p in files]
    rng = np.random.default_rng(1)
    second = [perturb(im, rng) for im in first]
    desc = encoder.encode(first + second)
    db = MapDatabase(encoder.descriptor_dim, encoder.fingerprint)
    det = LoopClosureDetector(db, DetectorConfig(mode='slam', exclusion_frames=50, exclusion_time_s=0.0,
                                                 min_score=0.0, relative_score=1.0, temporal_consistency=3,
                                                 consistency_tolerance=3, nms_radius=3, false_alarm_rate=0.0,
                                                 keyframe_min_time_s=0.0, keyframe_max_similarity=1.0))
    n = len(files)
    names = [p.name for p in files] * 2
    correct = wrong = 0
    for t, d in enumerate(desc):
        r = det.process(d, t * 10**9, source=names[t])
        assert r.keyframe_id == t
        for c in r.candidates:
            assert t - c.match_id > 50
            if abs(c.match_id - (t - n)) <= TOL:
                correct += 1
            else:
                wrong += 1
    accepted = correct + wrong
    print(f'\nSLAM over two traversals of {n} frames: {accepted} loop closures accepted, {correct} correct, '
          f'{wrong} wrong; recall {correct / n:.3f}, precision {correct / max(accepted, 1):.3f}')
    assert correct >= 0.4 * n
    assert correct >= 0.7 * accepted
