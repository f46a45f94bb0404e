"""Map database.

Search against brute force, every index type, round trip, lookup, removal, merge, refusal of
mismatched or corrupt maps, atomic save under a killed writer, concurrent use.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from boq_vpr.errors import ConfigError, MapError
from boq_vpr.map import INDEX_TYPES, MANIFEST, Keyframe, MapDatabase
from boq_vpr.map.index import GrowableArray, VectorIndex

ROOT = Path(__file__).resolve().parents[1]
D = 64


@pytest.fixture(autouse=True, scope='module')
def _one_faiss_thread():
    """FAISS's OpenMP threads only slow these small indexes down on a shared CI machine."""
    import faiss
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def structured(n: int, d: int = D, latent: int = 16, noise: float = 0.1, seed: int = 0) -> np.ndarray:
    """Make unit vectors with a low intrinsic dimension plus noise (as real descriptors have)."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(1234).standard_normal((latent, d)).astype(np.float32)
    x = rng.standard_normal((n, latent)).astype(np.float32) @ basis
    x += noise * np.sqrt(latent) * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def keyframes(n: int, start: int = 0, session: str = 's1', step_ns: int = 100_000_000) -> list[Keyframe]:
    return [Keyframe(-1, (start + i) * step_ns, position=(float(i), 2.0 * i, 0.5),
                     orientation=(0.0, 0.0, 0.0, 1.0), frame_id='map', source=f'img{start + i:05d}.png',
                     session=session) for i in range(n)]


# Small options so that trainable types train on a few hundred vectors.
SMALL = {'flat': {}, 'fp16': {}, 'hnsw': {'hnsw_m': 16}, 'pca': {'pca_dim': 32},
         'ivfpq': {'nlist': 8, 'pq_m': 16, 'pq_nbits': 6, 'nprobe': 8, 'train_size': 400}}


def brute_force(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q @ x.T
    order = np.argsort(-s, axis=1, kind='stable')[:, :k]
    return np.take_along_axis(s, order, axis=1), order


def test_flat_matches_brute_force_and_pads():
    x = structured(500)
    db = MapDatabase(D, 'model-a')
    ids = db.add(x, keyframes(500))
    assert ids == list(range(500)) and len(db) == 500
    q = structured(7, seed=5)
    scores, got = db.search(q, 10)
    ref_s, ref_i = brute_force(x, q, 10)
    assert got.dtype == np.int64 and scores.dtype == np.float32 and got.shape == (7, 10)
    np.testing.assert_array_equal(got, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    # a single [D] query, k larger than the map: padded with -1 / -inf
    small = MapDatabase(D, 'model-a')
    small.add(x[:3], keyframes(3))
    s1, i1 = small.search(x[0], 5)
    assert i1.shape == (1, 5) and i1[0, 0] == 0 and list(i1[0, 3:]) == [-1, -1] and np.isneginf(s1[0, 3:]).all()
    # id_below restricts to older keyframes
    s2, i2 = db.search(q, 10, id_below=100)
    ref_s, ref_i = brute_force(x[:100], q, 10)
    np.testing.assert_array_equal(i2, ref_i)
    assert (db.search(q, 3, id_below=0)[1] == -1).all()


@pytest.mark.parametrize('index_type', list(INDEX_TYPES))
def test_index_types_recall_and_round_trip(index_type, tmp_path):
    x = structured(1200, seed=1)
    db = MapDatabase(D, 'model-a', index_type, **SMALL[index_type])
    db.add(x[:300], keyframes(300))             # below the training size of ivfpq: kept pending
    db.add(x[300:], keyframes(900, start=300))  # ... trains here
    assert db.is_trained and len(db) == 1200
    q = x[::40] + 0.02 * np.random.default_rng(3).standard_normal((30, D)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    scores, ids = db.search(q, 5)
    exact = brute_force(x, q, 1)[1][:, 0]
    recall = float(np.mean(ids[:, 0] == exact))
    assert recall >= (1.0 if index_type in ('flat', 'fp16') else 0.9), f'{index_type} recall@1 {recall}'
    assert np.all(np.diff(scores, axis=1) <= 1e-6), 'scores must be sorted best first'
    # id_below holds for every type
    _, older = db.search(q, 5, id_below=600)
    assert ((older < 600) & (older >= -1)).all()
    db.save(tmp_path / 'map')
    back = MapDatabase.load(tmp_path / 'map', fingerprint='model-a', descriptor_dim=D)
    assert (back.index_type, len(back), back.index_options) == (index_type, 1200, db.index_options)
    s2, i2 = back.search(q, 5)
    np.testing.assert_array_equal(i2, ids)
    np.testing.assert_allclose(s2, scores, atol=1e-5)
    assert back.keyframe(17) == db.keyframe(17)


def test_untrained_index_is_searchable_saved_and_explains_training(tmp_path):
    x = structured(100)
    db = MapDatabase(D, 'm', 'ivfpq', nlist=8, pq_m=16, pq_nbits=6)
    db.add(x, keyframes(100))
    assert not db.is_trained
    _, ids = db.search(x[:5], 1)
    assert list(ids[:, 0]) == [0, 1, 2, 3, 4]   # exact over the pending vectors
    db.save(tmp_path / 'm')
    back = MapDatabase.load(tmp_path / 'm')
    assert not back.is_trained and len(back) == 100
    assert list(back.search(x[:5], 1)[1][:, 0]) == [0, 1, 2, 3, 4]
    few = MapDatabase(D, 'm', 'ivfpq', nlist=8, pq_m=16, pq_nbits=6)
    few.add(x[:10], keyframes(10))
    with pytest.raises(MapError, match='needs at least 64 vectors'):
        few.train()
    with pytest.raises(ConfigError, match='train_size 10 is too small'):   # refused before any vector
        MapDatabase(D, 'm', 'ivfpq', nlist=8, pq_m=16, pq_nbits=6, train_size=10)


def test_metadata_lookup_by_id_and_time_and_thumbnails(tmp_path):
    db = MapDatabase(D, 'm')
    rng = np.random.default_rng(0)
    thumbs = [rng.integers(0, 255, (48, 64, 3), np.uint8), None, rng.integers(0, 255, (400, 600), np.uint8)]
    db.add(structured(3), [Keyframe(-1, 10), Keyframe(-1, 20, position=(1, 2, 3)), Keyframe(-1, 30)], thumbnails=thumbs)
    db.add(structured(2, seed=1), [Keyframe(-1, 25, frame_id='odom', source='bag:/cam', session='b'),
                                   Keyframe(-1, 40, orientation=(0, 0, 0.7071, 0.7071), session='b')])
    kf = db.keyframe(1)
    assert kf == Keyframe(1, 20, (1.0, 2.0, 3.0), None, '', '', '')
    assert db.keyframe(3).frame_id == 'odom' and db.keyframe(3).source == 'bag:/cam'
    assert [k.id for k in db.keyframes_between(15, 30)] == [1, 3, 2]
    assert db.nearest_in_time(27).id == 3 and db.nearest_in_time(1000).id == 4
    assert db.nearest_in_time(27, session='').id == 2
    assert db.first_id_at_or_after(26) == 2 and db.first_id_at_or_after(100) is None
    assert db.sessions() == {'': 3, 'b': 2}
    with pytest.raises(KeyError, match='no keyframe with id 99'):
        db.keyframe(99)
    t0 = db.thumbnail(0)
    assert t0.dtype == np.uint8 and t0.shape == (48, 64)
    assert db.thumbnail(1) is None
    assert max(db.thumbnail(2).shape) == 160       # shrunk to the thumbnail size
    db.save(tmp_path / 'map')
    back = MapDatabase.load(tmp_path / 'map')
    assert back.keyframes() == db.keyframes()
    np.testing.assert_array_equal(back.thumbnail(0), t0)


@pytest.mark.parametrize('index_type', ['flat', 'hnsw', 'ivfpq'])
def test_remove_session_and_merge(index_type, tmp_path):
    x = structured(900, seed=2)
    db = MapDatabase(D, 'm', index_type, **SMALL[index_type])
    db.add(x[:500], keyframes(500, session='a'))
    db.add(x[500:], keyframes(400, start=500, session='b'))
    assert db.remove_session('b') == 400
    assert db.remove_session('nope') == 0
    assert len(db) == 500 and db.sessions() == {'a': 500}
    _, ids = db.search(x[500:520], 3)
    assert (ids < 500).all()
    _, ids = db.search(x[:50], 1)
    assert np.mean(ids[:, 0] == np.arange(50)) >= 0.9
    # ids keep growing after removal; the index agrees with the metadata after a round trip
    new = db.add(x[500:510], keyframes(10, start=900, session='c'))
    assert new == list(range(900, 910))
    db.save(tmp_path / 'a')
    back = MapDatabase.load(tmp_path / 'a')
    assert len(back) == 510 and back.search(x[505], 1)[1][0, 0] == 905

    other = MapDatabase(D, 'm', 'flat')
    other.add(x[600:700], keyframes(100, start=600, session='day2'))
    mapping = back.merge(other, session='day2-merged')
    assert len(back) == 610 and len(mapping) == 100 and min(mapping.values()) == 910
    assert back.sessions()['day2-merged'] == 100
    _, ids = back.search(x[600:700], 1)
    assert np.mean(ids[:, 0] == np.array([mapping[i] for i in range(100)])) >= 0.9
    assert back.keyframe(mapping[0]).source == 'img00600.png'
    with pytest.raises(MapError, match='model other'):
        back.merge(MapDatabase(D, 'other'))


def test_bad_input_is_refused_with_a_clear_message():
    db = MapDatabase(D, 'm')
    with pytest.raises(MapError, match=r'\[N, 64\]'):
        db.add(np.ones((2, 32), np.float32), keyframes(2))
    with pytest.raises(MapError, match='NaN'):
        db.add(np.full(D, np.nan, np.float32), keyframes(1))
    with pytest.raises(MapError, match='2 descriptors but 1 keyframes'):
        db.add(structured(2), keyframes(1))
    with pytest.raises(MapError, match='quaternion'):
        db.add(structured(1), [Keyframe(-1, 0, orientation=(0, 0, 1))])
    assert len(db) == 0
    with pytest.raises(ConfigError, match='valid: flat, pca, fp16, hnsw, ivfpq'):
        MapDatabase(D, 'm', 'annoy')
    with pytest.raises(ConfigError, match="no option.*nprobe"):
        MapDatabase(D, 'm', 'flat', nprobe=3)
    with pytest.raises(ConfigError, match='pq_m=7 must divide'):
        MapDatabase(D, 'm', 'ivfpq', pq_m=7)
    with pytest.raises(ConfigError, match='k must be positive'):
        db.search(structured(1), 0)
    with pytest.raises(ConfigError, match='train_size 100 is too small.*at least 256'):
        MapDatabase(D, 'm', 'ivfpq', nlist=256, pq_m=8, train_size=100)


def test_a_failed_training_leaves_the_map_as_it_was(monkeypatch):
    db = MapDatabase(D, 'm', 'ivfpq', nlist=16, pq_m=8, pq_nbits=4, train_size=100)
    db.add(structured(60), keyframes(60))

    def broken(self, x, ids):
        raise RuntimeError('FAISS ran out of memory')
    monkeypatch.setattr(VectorIndex, '_trained_index', broken)
    with pytest.raises(RuntimeError):
        db.add(structured(50, seed=1), keyframes(50, start=60))
    assert len(db) == 60 and db.ids().tolist() == list(range(60)) and db.next_id == 60
    monkeypatch.undo()
    assert db.add(structured(50, seed=1), keyframes(50, start=60))[0] == 60
    assert db.is_trained and len(db) == 110 and len(db.keyframes()) == 110


def test_unnormalized_descriptors_are_normalized_with_a_warning(caplog):
    db = MapDatabase(D, 'm')
    x = structured(3) * 5.0
    db.add(x, keyframes(3))
    assert 'not L2-normalized' in caplog.text
    s, i = db.search(x[1], 1)
    assert i[0, 0] == 1 and s[0, 0] == pytest.approx(1.0, abs=1e-5)


def _saved(tmp_path: Path, n: int = 50) -> Path:
    db = MapDatabase(D, 'model-a')
    db.add(structured(n), keyframes(n))
    db.save(tmp_path / 'map')
    return tmp_path / 'map'


def test_load_refuses_other_model_or_size_naming_both(tmp_path):
    path = _saved(tmp_path)
    with pytest.raises(MapError) as err:
        MapDatabase.load(path, fingerprint='model-b', descriptor_dim=128)
    msg = str(err.value)
    assert "'model-a'" in msg and "'model-b'" in msg and '64' in msg and '128' in msg
    with pytest.raises(MapError, match='descriptor size 64 .this encoder: 32'):
        MapDatabase.load(path, fingerprint='model-a', descriptor_dim=32)
    assert len(MapDatabase.load(path, fingerprint='model-a', descriptor_dim=64)) == 50


def test_load_refuses_truncated_corrupt_and_missing_files_naming_them(tmp_path):
    path = _saved(tmp_path)
    data = path / json.loads((path / MANIFEST).read_text())['data_dir']
    index = data / 'index.faiss'
    original = index.read_bytes()
    index.write_bytes(original[:len(original) // 2])
    with pytest.raises(MapError, match=r'index\.faiss is truncated'):
        MapDatabase.load(path)
    corrupt = bytearray(original)
    corrupt[len(corrupt) // 2] ^= 0xFF
    index.write_bytes(bytes(corrupt))
    with pytest.raises(MapError, match=r'index\.faiss is corrupt'):
        MapDatabase.load(path)
    index.write_bytes(original)
    (data / 'keyframes.sqlite').unlink()
    with pytest.raises(MapError, match=r'keyframes\.sqlite is missing'):
        MapDatabase.load(path)
    good = json.loads((path / MANIFEST).read_text())
    for broken in ({'files': ['index.faiss']}, {'descriptor_dim': 'x'}, {'data_dir': '../../elsewhere'},
                   {'files': {'index.faiss': {'sha256': 'ab'}}}):
        (path / MANIFEST).write_text(json.dumps({**good, **broken}))
        with pytest.raises(MapError, match=r'manifest\.json is malformed'):
            MapDatabase.load(path)
    (path / MANIFEST).write_text('{"format": "boq_vpr-map", ')
    with pytest.raises(MapError, match=r'manifest\.json is corrupt'):
        MapDatabase.load(path)
    (path / MANIFEST).unlink()
    with pytest.raises(MapError, match='not a map'):
        MapDatabase.load(path)


def test_load_never_unpickles(tmp_path):
    """A pickled array slipped in with matching checksums is refused, not executed."""
    path = _saved(tmp_path)
    manifest = json.loads((path / MANIFEST).read_text())
    ids = path / manifest['data_dir'] / 'ids.npy'
    np.save(ids, np.array([object()] * 50, dtype=object), allow_pickle=True)
    import hashlib
    manifest['files']['ids.npy'] = {'bytes': ids.stat().st_size, 'sha256': hashlib.sha256(ids.read_bytes()).hexdigest()}
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(MapError, match='ids.npy|pending'):
        MapDatabase.load(path)


def test_save_refuses_foreign_directories(tmp_path):
    (tmp_path / 'photos').mkdir()
    (tmp_path / 'photos' / 'a.jpg').write_bytes(b'x')
    with pytest.raises(MapError, match=r'holds other files \(a\.jpg\)'):
        MapDatabase(D, 'm').save(tmp_path / 'photos')
    (tmp_path / 'file').write_text('x')
    with pytest.raises(MapError, match='not a directory'):
        MapDatabase(D, 'm').save(tmp_path / 'file')


# The child grows the map and saves it in a loop; ``pause`` makes it stop inside save at a
# chosen point (after the data are written / just before the manifest is replaced) so that the
# parent's SIGKILL lands exactly there; without ``pause`` the kill lands at a random time.
_WRITER = textwrap.dedent('''
    import os, sys, time
    import numpy as np
    import faiss
    from boq_vpr.map import MapDatabase, Keyframe
    path, pause = sys.argv[1], sys.argv[2]
    db = MapDatabase.load(path)
    if pause == 'data':
        real = faiss.write_index
        def slow(index, name):
            real(index, name)
            print('PAUSED', flush=True); time.sleep(60)
        faiss.write_index = slow
    elif pause == 'commit':
        real_replace = os.replace
        def slow_replace(a, b):
            if str(b).endswith('manifest.json'):
                print('PAUSED', flush=True); time.sleep(60)
            real_replace(a, b)
        os.replace = slow_replace
    rng = np.random.default_rng(len(db))
    while True:
        x = rng.standard_normal((2000, 64)).astype(np.float32)
        db.add(x, [Keyframe(-1, len(db) + i) for i in range(2000)])
        print('SAVING', len(db), flush=True)
        db.save(path)
        print('SAVED', len(db), flush=True)
''')


@pytest.mark.parametrize('pause', ['data', 'commit', 'random'])
def test_atomic_save_survives_a_killed_writer(pause, tmp_path):
    path = _saved(tmp_path, n=50)
    env = {**os.environ, 'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', '')}
    saved, started = {50}, set()
    for attempt in range(2 if pause != 'random' else 4):
        proc = subprocess.Popen([sys.executable, '-c', _WRITER, str(path), pause], stdout=subprocess.PIPE,
                                text=True, env=env)
        try:
            if pause == 'random':
                # let it finish a save or two, then kill at a random moment
                deadline = time.monotonic() + 60
                seen = 0
                while seen < attempt + 1 and time.monotonic() < deadline:
                    line = proc.stdout.readline()
                    if line.startswith('SAVING'):
                        started.add(int(line.split()[1]))
                    if line.startswith('SAVED'):
                        saved.add(int(line.split()[1]))
                        seen += 1
                time.sleep(0.01 * (attempt * 7 % 10))
            else:
                for line in proc.stdout:
                    if line.startswith('PAUSED'):
                        break
        finally:
            proc.send_signal(signal.SIGKILL)
            rest, _ = proc.communicate(timeout=30)
        saved.update(int(line.split()[1]) for line in rest.splitlines() if line.startswith('SAVED'))
        started.update(int(line.split()[1]) for line in rest.splitlines() if line.startswith('SAVING'))
        db = MapDatabase.load(path)   # always a complete map: the last saved one, or the one whose
        # save was committed just before the kill (before the child could print SAVED)
        assert len(db) == max(saved) or (pause == 'random' and len(db) in started and len(db) > max(saved)), \
            (len(db), saved, started)
        saved.add(len(db))
        # the map is fully usable
        assert db.search(np.ones(64, np.float32), 1)[1][0, 0] >= 0
    # leftovers of killed saves are cleaned by the next successful save
    MapDatabase.load(path).save(path)
    assert sorted(p.name for p in path.iterdir()) == [json.loads((path / MANIFEST).read_text())['data_dir'], MANIFEST]


def test_a_first_save_killed_before_its_manifest_does_not_lock_the_folder(tmp_path):
    """Only the leftovers of an interrupted first save (no manifest yet): the next save goes ahead."""
    path = tmp_path / 'map'
    (path / '.data-tmp-x1y2').mkdir(parents=True)
    (path / 'data-000001').mkdir()
    (path / 'data-000001' / 'index.faiss').write_bytes(b'half')
    (path / '.manifest-abc.json').write_text('{')
    db = MapDatabase(D, 'm')
    db.add(structured(10), keyframes(10))
    db.save(path)
    assert len(MapDatabase.load(path)) == 10
    assert sorted(p.name for p in path.iterdir()) == [json.loads((path / MANIFEST).read_text())['data_dir'], MANIFEST]


def test_concurrent_add_search_and_save(tmp_path):
    db = MapDatabase(D, 'm')
    x = structured(2000)
    errors: list[BaseException] = []

    def worker():
        try:
            for i in range(0, 2000, 20):
                db.add(x[i:i + 20], keyframes(20, start=i))
                db.search(x[i], 5)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    t = threading.Thread(target=worker)
    t.start()
    saves = 0
    while t.is_alive():
        db.save(tmp_path / 'map')
        saves += 1
    t.join()
    assert not errors, errors
    assert saves >= 1
    back = MapDatabase.load(tmp_path / 'map')
    assert len(back) % 20 == 0 and len(back) == back.next_id <= 2000
    db.save(tmp_path / 'map')
    assert len(MapDatabase.load(tmp_path / 'map')) == 2000


def test_search_options_change_at_run_time_and_persist(tmp_path):
    x = structured(300)
    db = MapDatabase(D, 'm', 'hnsw', hnsw_m=8)
    db.add(x, keyframes(300))
    db.set_search_options(ef_search=16)
    assert db.search(x[:5], 1)[1][:, 0].tolist() == [0, 1, 2, 3, 4]
    db.save(tmp_path / 'm')
    assert MapDatabase.load(tmp_path / 'm').index_options['ef_search'] == 16
    with pytest.raises(ConfigError, match='nprobe does not apply to index type hnsw'):
        db.set_search_options(nprobe=4)
    with pytest.raises(ConfigError, match='ef_search must be >= 1'):
        db.set_search_options(ef_search=0)


# ------------------------------------------------------------------ slam-mode adds, training, save
# Options with a PQ coarse enough (4 bits) that the compressed scores are far from the cosine.
COARSE = {'nlist': 8, 'pq_m': 8, 'pq_nbits': 4, 'nprobe': 8, 'train_size': 300}


@pytest.mark.parametrize('index_type,options', [('pca', {'pca_dim': 16, 'train_size': 100_000}),
                                                ('ivfpq', {**COARSE, 'train_size': 100_000})])
def test_adds_do_not_copy_the_whole_map(index_type, options, monkeypatch):
    """An add must not re-concatenate the pending matrix and the id array (a cost linear in the map size).

    Adds append to buffers that grow by doubling, so there is no concatenation and the number
    of buffer copies is logarithmic in the number of adds.
    """
    db = MapDatabase(D, 'm', index_type, **options)
    x = structured(3000)
    calls = []
    real = np.concatenate
    monkeypatch.setattr(np, 'concatenate', lambda *a, **k: calls.append(1) or real(*a, **k))
    for i in range(3000):
        db.add(x[i], keyframes(1, start=i))
    monkeypatch.undo()
    assert not calls, f'{len(calls)} concatenations for 3000 adds'
    index = db._index
    assert index._ids.reallocations <= 6 and index._pending.reallocations <= 6   # 256 * 2**4 > 3000
    assert db.ids().tolist() == list(range(3000))
    assert db.search(x[1234], 1)[1][0, 0] == 1234


def test_growable_array_keeps_handed_out_views():
    a = GrowableArray((2,), np.float32, capacity=2)
    a.append(np.ones((2, 2)))
    view = a.view()
    a.append(np.full((3, 2), 2.0))     # grows: a new buffer, the view keeps its rows
    a.truncate(4)
    assert view.tolist() == [[1, 1], [1, 1]] and len(a) == 4 and a.reallocations == 1


def test_training_runs_in_the_background_while_adds_and_exact_search_go_on(monkeypatch):
    """The add that reaches the training size must not train the index inside the caller (and the detector's lock).

    With background training the add returns while training runs, searches stay exact meanwhile,
    and vectors added during training are in the trained index.
    """
    release, started = threading.Event(), threading.Event()
    real = VectorIndex._trained_index

    def gated(self, x, ids):
        started.set()
        assert release.wait(60), 'test never released the training'
        return real(self, x, ids)
    monkeypatch.setattr(VectorIndex, '_trained_index', gated)
    db = MapDatabase(D, 'm', 'ivfpq', background_training=True, **COARSE)
    x = structured(600, seed=5)
    for i in range(300):                               # the 300th add reaches train_size
        db.add(x[i], keyframes(1, start=i))
    assert started.wait(60) and db.training and not db.is_trained   # the add returned, training runs
    for i in range(300, 600):                          # adds go on during training
        db.add(x[i], keyframes(1, start=i))
    scores, ids = db.search(x[[5, 450]], 1)            # exact meanwhile
    assert ids[:, 0].tolist() == [5, 450] and np.allclose(scores[:, 0], 1.0, atol=1e-5)
    release.set()
    assert db.wait_for_training(60) and db.is_trained and not db.training
    scores, ids = db.search(x[[5, 450, 599]], 1)       # vectors of every phase in the trained index
    assert ids[:, 0].tolist() == [5, 450, 599] and np.allclose(scores[:, 0], 1.0, atol=1e-5)
    assert len(db) == 600 and db._index.pending_count == 0


def test_a_removal_during_background_training_drops_that_training(monkeypatch):
    release = threading.Event()
    real = VectorIndex._trained_index
    monkeypatch.setattr(VectorIndex, '_trained_index',
                        lambda self, x, ids: release.wait(60) and real(self, x, ids))
    db = MapDatabase(D, 'm', 'ivfpq', background_training=True, **COARSE)
    x = structured(400, seed=6)
    db.add(x[:300], keyframes(300))
    trainer = db._index._trainer
    assert db.training
    db.remove([3, 4])
    release.set()
    trainer.join(60)
    assert not db.is_trained and len(db) == 298        # the old training's result was dropped
    monkeypatch.undo()
    db.add(x[300:], keyframes(100, start=300))         # ... and a new one starts
    assert db.wait_for_training(60) and db.is_trained
    assert db.search(x[3], 1)[1][0, 0] != 3 and db.search(x[5], 1)[1][0, 0] == 5


@pytest.mark.parametrize('index_type,options', [('ivfpq', COARSE), ('pca', {'pca_dim': 8, 'train_size': 300})])
def test_scores_keep_one_scale_across_training(index_type, options):
    """Scores must not jump when the index trains, or a tuned threshold changes meaning mid-run.

    Exact cosines before, PCA or PQ approximations after: the candidates are re-scored with the
    stored full descriptors, so the same queries score the same before and after.
    """
    x = structured(400, seed=7)
    q = x[[10, 120, 250]] + 0.3 * np.random.default_rng(8).standard_normal((3, D)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    db = MapDatabase(D, 'm', index_type, **options)
    db.add(x[:299], keyframes(299))
    assert not db.is_trained
    before = db.search(np.concatenate([x[[10, 120]], q]), 3)
    db.add(x[299:], keyframes(101, start=299))
    assert db.is_trained
    after = db.search(np.concatenate([x[[10, 120]], q]), 3)
    np.testing.assert_allclose(after[0][:2, 0], 1.0, atol=1e-5)          # an exact copy scores 1 on both sides
    np.testing.assert_allclose(after[0][:, 0], before[0][:, 0], atol=1e-5)
    assert db.descriptors([10]) == pytest.approx(x[[10]], abs=1e-6)       # exact, not a reconstruction
    # without re-ranking the scale changes at training (the documented trade-off of rerank=0)
    raw = MapDatabase(D, 'm', index_type, rerank=0, **options)
    raw.add(x, keyframes(400))
    assert np.abs(raw.search(q, 1)[0][:, 0] - before[0][2:, 0]).max() > 1e-3


def test_save_writes_outside_the_map_lock(tmp_path, monkeypatch):
    """Save must not hold the map lock while it writes, fsyncs and checksums the files.

    Frame processing would stop for the length of a save: adds and searches run while a save is in its
    writing phase; the saved map is the snapshot taken when the save began.
    """
    from boq_vpr.map import persist
    db = MapDatabase(D, 'm', 'ivfpq', background_training=False, **COARSE)
    x = structured(500, seed=9)
    db.add(x[:400], keyframes(400), thumbnails=[np.zeros((8, 8), np.uint8)] * 400)
    writing, release = threading.Event(), threading.Event()
    real = persist.file_sha256

    def slow_digest(path):
        writing.set()
        assert release.wait(60), 'test never released the save'
        return real(path)
    monkeypatch.setattr(persist, 'file_sha256', slow_digest)
    saver = threading.Thread(target=db.save, args=(tmp_path / 'map',))
    saver.start()
    assert writing.wait(60)
    worker = threading.Thread(target=lambda: (db.add(x[400:], keyframes(100, start=400)), db.search(x[0], 3)))
    worker.start()
    worker.join(60)      # a hang guard, not a timing threshold: with the lock held it never returns
    blocked = worker.is_alive()
    release.set()
    saver.join()
    worker.join()
    assert not blocked, 'add/search waited for the save'
    monkeypatch.undo()
    back = MapDatabase.load(tmp_path / 'map')
    assert len(back) == 400 and back.next_id == 400 and back.keyframe_image(399) is not None
    assert len(db) == 500
    np.testing.assert_allclose(back.search(x[:3], 1)[0][:, 0], 1.0, atol=1e-5)


def test_keyframe_images_live_on_disk_and_queries_are_prepared_alike(tmp_path):
    db = MapDatabase(D, 'm', thumbnail_size=32)
    rgb = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    (kid,) = db.add(structured(1), keyframes(1), thumbnails=[rgb])
    assert db._store._file.is_file()                   # an SQLite file, not an in-memory database
    img = db.keyframe_image(kid)
    np.testing.assert_array_equal(img, db.query_image(rgb))
    assert img.shape == (24, 32) and db.thumbnail(kid) is not None and db.keyframe_image(kid + 1) is None
    scratch = db._store._dir
    db.close()
    assert not scratch.exists()


def test_bench_map_slam_prints_and_saves_its_figures(tmp_path):
    """`boq-vpr bench map --slam` at a tiny size: every variant and the save stall are in the JSON.

    The variants: add only, behind a search, behind a cold-cache scan; flat, pca, ivfpq; training in
    the background or inside the add. Figures only, no timing is judged here.
    """
    import json
    import subprocess
    import sys
    out = tmp_path / 'slam.json'
    proc = subprocess.run([sys.executable, '-m', 'boq_vpr.cli', 'bench', 'map', '--slam', '--slam-dim', '64',
                           '--slam-keyframes', '1200', '--slam-train-size', '600', '--save-stall-size', '3000',
                           '--out', str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = report['slam_adds']
    assert [(r['variant'], r['background_training'], r['before_add']) for r in rows] == [
        ('flat', True, 'nothing'), ('flat', True, 'search'), ('flat', True, 'sweep'), ('pca', True, 'search'),
        ('ivfpq', True, 'nothing'), ('ivfpq', True, 'search'), ('ivfpq', False, 'search')]
    for r in rows:
        assert r['trained'] and r['add_ms_mean_100'] > 0 and r['add_ms_mean_1000'] > 0
        assert r['ratio_last_first_window'] > 0
    inside = rows[-1]
    assert inside['adds_during_training'] == 0 and inside['training_started_at_keyframe'] == 599
    stall = report['save_stall']
    assert set(stall) >= {'lock_held_whole_save', 'snapshot_then_write', 'stall_ratio_before_after'}
    assert 'figures saved to' in proc.stdout and 'slam adds ivfpq' in proc.stdout


def test_a_failed_add_leaves_neither_half_and_ids_do_not_repeat(monkeypatch, tmp_path):
    """A store or index failure inside add: the map stays as it was, and it still saves and loads.

    No vectors without keyframe rows, no repeated ids.
    """
    db = MapDatabase(D, 'm')
    x = structured(8, seed=9)
    db.add(x[:3], keyframes(3))
    real_store_add = type(db._store).add
    monkeypatch.setattr(type(db._store), 'add', lambda *a, **k: (_ for _ in ()).throw(OSError('disk full')))
    with pytest.raises(OSError):
        db.add(x[3:5], keyframes(2, start=3))
    monkeypatch.setattr(type(db._store), 'add', real_store_add)
    real_index_add = VectorIndex.add
    monkeypatch.setattr(VectorIndex, 'add', lambda *a, **k: (_ for _ in ()).throw(MemoryError('no memory')))
    with pytest.raises(MemoryError):
        db.add(x[3:5], keyframes(2, start=3))
    monkeypatch.setattr(VectorIndex, 'add', real_index_add)
    assert len(db) == 3 and db._store.count() == 3 and db.ids().tolist() == [0, 1, 2]
    assert db.add(x[3:5], keyframes(2, start=3)) == [3, 4]
    db.save(tmp_path / 'map')
    assert MapDatabase.load(tmp_path / 'map').ids().tolist() == [0, 1, 2, 3, 4]


def test_a_training_overtaken_by_another_or_by_close_drops_its_result(monkeypatch):
    """A background training older than the index installed meanwhile must not install over it.

    Its snapshot is older than the index installed meanwhile (an explicit train, as a racing add
    could start one just before it): installing would lose vectors. After close its result is
    dropped too.
    """
    release = threading.Event()
    real = VectorIndex._trained_index
    monkeypatch.setattr(VectorIndex, '_trained_index',
                        lambda self, x, ids: (release.wait(60) or True) and real(self, x, ids)
                        if threading.current_thread().name == 'boq_vpr-map-training' else real(self, x, ids))
    db = MapDatabase(D, 'm', 'ivfpq', background_training=True, **COARSE)
    x = structured(400, seed=10)
    db.add(x[:300], keyframes(300))
    trainer = db._index._trainer
    assert db.training
    with db._lock:                       # what train() does once its wait ended: train inline, install
        db._index._train_now()
    db.add(x[300:], keyframes(100, start=300))
    release.set()
    trainer.join(60)
    assert db.is_trained and len(db) == 400 and db._index._index.ntotal == 400
    assert db.search(x[350], 1)[1][0, 0] == 350
    release.clear()
    other = MapDatabase(D, 'm', 'ivfpq', background_training=True, **COARSE)
    other.add(x[:300], keyframes(300))
    trainer = other._index._trainer
    other.close()
    release.set()
    trainer.join(60)
    assert not other._index._index.is_trained        # the closed map's training was dropped


def test_load_refuses_a_next_id_below_its_ids(tmp_path):
    path = _saved(tmp_path)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest['next_id'] = 10
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(MapError, match='next_id 10'):
        MapDatabase.load(path)
