"""Training and validation datasets.

GSV-Cities layout, validation layouts with hand-computed recall@k, and the training-set builder.
Small generated folders; no training.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip('pandas')
pytest.importorskip('scipy')

from boq_vpr.errors import ConfigError, DatasetError  # noqa: E402
from boq_vpr.preprocessing import Preprocessor  # noqa: E402
from training.config import ValSetConfig  # noqa: E402
from training.gsv import GSVCitiesDataset, image_name, read_city  # noqa: E402
from training.make_train_set import Traversal, build_train_set  # noqa: E402
from training.metrics import recalls, retrieve  # noqa: E402
from training.valsets import ImageListDataset, load_valset, parse_valset_spec  # noqa: E402

GSV_HEADER = ['place_id', 'year', 'month', 'northdeg', 'city_id', 'lat', 'lon', 'panoid']


def write_image(path: Path, value: int = 0, size: tuple[int, int] = (24, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)
    return path


# ---------------------------------------------------------------- recall@k by hand

def unit(*v: float) -> np.ndarray:
    a = np.asarray(v, np.float32)
    return a / np.linalg.norm(a)


# database: 4 one-hot descriptors; queries ranked by hand:
#   q0 = e0            -> d0 first                       (positive d0: rank 1)
#   q1 = .8 e1 + .6 e2 -> d1, d2                         (positive d2: rank 2)
#   q2 = (.7,.5,.3,.1) -> d0, d1, d2, d3                 (positive d3: rank 4)
# recall: R@1 = 1/3, R@2 = 2/3, R@3 = 2/3, R@4 = 3/3
DB_DESC = np.eye(4, dtype=np.float32)
Q_DESC = np.stack([unit(1, 0, 0, 0), unit(0, .8, .6, 0), unit(.7, .5, .3, .1)])
HAND_RECALL = {1: 1 / 3, 2: 2 / 3, 3: 2 / 3, 4: 1.0}


def test_recall_at_k_hand_computed():
    pred = retrieve(DB_DESC, Q_DESC, 4)
    assert pred[0, 0] == 0 and pred[1, :2].tolist() == [1, 2] and pred[2].tolist() == [0, 1, 2, 3]
    got = recalls(pred, [np.array([0]), np.array([2]), np.array([3])], (1, 2, 3, 4))
    assert got == pytest.approx(HAND_RECALL)
    # k beyond the predictions uses all of them; a query without positives is left out
    assert (recalls(pred[:, :2], [np.array([0]), np.array([2]), np.array([])], (1, 5))
            == pytest.approx({1: 1 / 2, 5: 1.0}))
    with pytest.raises(AssertionError):
        recalls(pred, [np.array([0])], (1,))     # one ground-truth row for three queries
    with pytest.raises(AssertionError):
        recalls(pred[0], [np.array([0])], (1,))  # not [Q, M]


# ---------------------------------------------------------------- validation layouts

def make_pitts(root: Path) -> Path:
    db_xy = [(0.0, 0.0), (100.0, 0.0), (200.0, 0.0), (300.0, 0.0)]
    # q3 is 700 m from every database image: no positive, left out with a warning
    q_xy = [(5.0, 0.0), (190.0, 0.0), (290.0, 10.0), (1000.0, 0.0)]
    for i, (e, n) in enumerate(db_xy):
        write_image(root / 'database' / f'@{e:010.2f}@{n:010.2f}@17@T@d{i}@.jpg', i)
    for i, (e, n) in enumerate(q_xy):
        write_image(root / 'queries' / f'@{e:010.2f}@{n:010.2f}@17@T@q{i}@.jpg', 10 + i)
    return root


def test_pitts_layout_positives_and_recall(tmp_path, caplog):
    root = make_pitts(tmp_path / 'pitts30k_val')
    with caplog.at_level(logging.WARNING):
        vs = load_valset(ValSetConfig(layout='pitts', root=str(root)))
    assert 'no database image within 25.0 m' in caplog.text and '1 of 4 queries' in caplog.text
    assert vs.name == 'pitts30k_val' and len(vs.database) == 4 and len(vs.queries) == 3
    assert [p.tolist() for p in vs.positives] == [[0], [2], [3]]
    assert vs.images[4].name.startswith('@0000005.00@')
    desc = np.concatenate([DB_DESC, Q_DESC])
    assert vs.recalls(desc, (1, 2, 3, 4)) == pytest.approx(HAND_RECALL)
    # a 150 m radius: q0 also has d1 (95 m), q1 has d1 (90 m) and d3 (110 m), q2 has d2 (90.6 m)
    wide = load_valset(ValSetConfig(layout='pitts', root=str(root), radius_m=150.0))
    assert [p.tolist() for p in wide.positives] == [[0, 1], [1, 2, 3], [2, 3]]


def test_pitts_layout_bad_name(tmp_path):
    root = make_pitts(tmp_path / 'p')
    bad = write_image(root / 'queries' / 'frame_0001.jpg')
    with pytest.raises(DatasetError, match='frame_0001.jpg.*@UTM_east@UTM_north@'):
        load_valset(ValSetConfig(layout='pitts', root=str(root)))
    bad.unlink()
    with pytest.raises(DatasetError, match='database/ and queries/'):
        load_valset(ValSetConfig(layout='pitts', root=str(tmp_path)))


def make_npy(root: Path, prefix: str = 'tiny_val', with_qidx: bool = False) -> Path:
    db = [f'db/{i}.jpg' for i in range(4)]
    qs = [f'q/{i}.jpg' for i in range(4 if with_qidx else 3)]
    for i, n in enumerate(db + qs):
        write_image(root / n, i)
    gt = np.empty(3, dtype=object)
    for i, p in enumerate([[0], [2], [3]]):
        gt[i] = np.array(p)
    np.save(root / f'{prefix}_dbImages.npy', np.array(db))
    if with_qidx:   # MSLS-val as shipped with GSV-Cities: queries = qImages[qIdx]; q/1.jpg is not used
        np.save(root / f'{prefix}_qImages.npy', np.array(qs))
        np.save(root / f'{prefix}_qIdx.npy', np.array([0, 2, 3]))
        np.save(root / f'{prefix}_pIdx.npy', gt, allow_pickle=True)
    else:
        np.save(root / f'{prefix}_qImages.npy', np.array(qs))
        np.save(root / f'{prefix}_gt_25m.npy', gt, allow_pickle=True)
    return root


@pytest.mark.parametrize('with_qidx', [False, True])
def test_npy_layout_recall(tmp_path, with_qidx):
    root = make_npy(tmp_path / 'val', with_qidx=with_qidx)
    vs = load_valset(ValSetConfig(layout='npy', root=str(root)))
    assert vs.name == 'tiny_val' and len(vs.database) == 4 and len(vs.queries) == 3
    if with_qidx:
        assert [p.name for p in vs.queries] == ['0.jpg', '2.jpg', '3.jpg']
    desc = np.concatenate([DB_DESC, Q_DESC])
    assert vs.recalls(desc, (1, 2, 3, 4)) == pytest.approx(HAND_RECALL)


def test_npy_layout_openvprlab_names_and_separate_ground_truth(tmp_path):
    images = tmp_path / 'images'
    gt_dir = tmp_path / 'gt'
    make_npy(images, prefix='x')
    gt_dir.mkdir()
    for src, dst in (('x_dbImages.npy', 'msls_val_ref_image_names.npy'),
                     ('x_qImages.npy', 'msls_val_query_image_names.npy'),
                     ('x_gt_25m.npy', 'msls_val_ground_truth_25m.npy')):
        (images / src).rename(gt_dir / dst)
    spec = parse_valset_spec(f'npy:{images}:{gt_dir}/msls_val')
    assert spec.prefix == f'{gt_dir}/msls_val'
    vs = load_valset(spec)
    assert vs.name == 'msls_val'
    assert vs.recalls(np.concatenate([DB_DESC, Q_DESC]), (1, 2, 3, 4)) == pytest.approx(HAND_RECALL)


def test_npy_layout_errors(tmp_path):
    root = make_npy(tmp_path / 'val')
    (root / 'q' / '1.jpg').unlink()
    with pytest.raises(DatasetError, match=r'tiny_val_qImages.npy: 1 of 3 images are missing.*row 1'):
        load_valset(ValSetConfig(layout='npy', root=str(root)))
    root2 = make_npy(tmp_path / 'val2')
    gt = np.empty(3, dtype=object)
    for i, p in enumerate([[0], [9], [3]]):
        gt[i] = np.array(p)
    np.save(root2 / 'tiny_val_gt_25m.npy', gt, allow_pickle=True)
    with pytest.raises(DatasetError, match=r'tiny_val_gt_25m.npy: row 1 has indices outside \[0, 4\)'):
        load_valset(ValSetConfig(layout='npy', root=str(root2)))
    make_npy(root2, prefix='other')
    with pytest.raises(DatasetError, match='several ground-truth sets'):
        load_valset(ValSetConfig(layout='npy', root=str(root2)))


def write_msls_side(folder: Path, rows: list[tuple[str, float, float, bool]], seed: int) -> None:
    (folder / 'images').mkdir(parents=True)
    with open(folder / 'postprocessed.csv', 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['', 'key', 'easting', 'northing', 'night', 'view_direction'])
        for i, (key, e, n, _) in enumerate(rows):
            w.writerow([i, key, e, n, False, 'Forward'])
    with open(folder / 'raw.csv', 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['', 'key', 'lon', 'lat', 'ca', 'captured_at', 'pano'])
        for i, (key, _, _, pano) in enumerate(rows):
            w.writerow([i, key, 12.5, 55.6, 90.0, 0, pano])
    for i, (key, *_rest) in enumerate(rows):
        write_image(folder / 'images' / f'{key}.jpg', seed + i)


def test_msls_layout_recall(tmp_path):
    root = tmp_path / 'msls'
    # cph: database d0..d2 in a row 100 m apart; queries: near d0, near d2, a panorama (left out)
    write_msls_side(root / 'train_val' / 'cph' / 'database',
                    [('cd0', 0, 0, False), ('cd1', 100, 0, False), ('cd2', 200, 0, False)], 0)
    write_msls_side(root / 'train_val' / 'cph' / 'query',
                    [('cq0', 3, 4, False), ('cq1', 210, 0, False), ('cqpano', 0, 0, True)], 10)
    # sf: one database image and a query near it, and a query 1 km away (no positive: left out)
    write_msls_side(root / 'train_val' / 'sf' / 'database', [('sd0', 5000, 5000, False)], 20)
    write_msls_side(root / 'train_val' / 'sf' / 'query', [('sq0', 5010, 5000, False), ('sqfar', 6000, 5000, False)], 30)
    vs = load_valset(ValSetConfig(layout='msls', root=str(root)))
    assert [p.stem for p in vs.database] == ['cd0', 'cd1', 'cd2', 'sd0']
    assert [p.stem for p in vs.queries] == ['cq0', 'cq1', 'sq0']
    assert [p.tolist() for p in vs.positives] == [[0], [2], [3]]
    # descriptors: cq0 -> d0 (hit @1); cq1 -> d1, d2 (hit @2); sq0 -> d0, d1, d2, d3 (hit @4)
    assert vs.recalls(np.concatenate([DB_DESC, Q_DESC]), (1, 2, 3, 4)) == pytest.approx(HAND_RECALL)


def test_image_list_dataset_uses_inference_preprocessing(tmp_path):
    paths = [write_image(tmp_path / f'{i}.png', i, (30, 50)) for i in range(2)]
    ds = ImageListDataset(paths, Preprocessor((32, 64)))
    x, i = ds[1]
    assert x.shape == (3, 32, 64) and x.dtype == torch.float32 and i == 1
    from boq_vpr.inputs.images import load_image
    ref = Preprocessor((32, 64)).to_tensor(load_image(paths[1]))[0]
    assert torch.equal(x, ref)


def test_valset_spec_errors():
    with pytest.raises(ConfigError, match='unknown layout'):
        parse_valset_spec('tokyo:/data')
    with pytest.raises(ConfigError, match='LAYOUT:PATH'):
        parse_valset_spec('/data/pitts')
    with pytest.raises(ConfigError, match='valid: msls, npy, pitts'):
        load_valset(ValSetConfig(layout='nordland', root='/x'))


# ---------------------------------------------------------------- GSV-Cities layout

def write_city(root: Path, city: str, places: dict[int, int], start: int = 0) -> Path:
    """``places``: place_id -> number of images. Returns the dataframe path."""
    rows = []
    for pid, n in places.items():
        for j in range(n):
            year, month, north = 2015 + j, 1 + j, 10 * j
            lat, lon = 45.5 + pid / 1000 + j / 1e5, -73.25 - pid / 1000
            panoid = f'pano_{pid}-{j}'    # underscores occur in real panoids
            rows.append([pid, year, month, north, city, lat, lon, panoid])
            write_image(root / 'Images' / city / image_name(city, pid, year, month, north, lat, lon, panoid),
                        start + 100 * pid + j)
    csv_path = root / 'Dataframes' / f'{city}.csv'
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(GSV_HEADER)
        w.writerows(rows)
    return csv_path


def test_image_name_matches_official_convention():
    assert image_name('London', 12, 2019, 3, 45, 51.5, -0.12, 'abc_DEF-1') == \
        'London_0000012_2019_03_045_51.5_-0.12_abc_DEF-1.jpg'


def test_gsv_dataset_places_and_skips(tmp_path, caplog):
    write_city(tmp_path, 'Alpha', {0: 4, 1: 5, 2: 2})   # place 2 has fewer than K=4 images
    write_city(tmp_path, 'Beta', {0: 3, 7: 1})          # no place with 4 images: city skipped
    with caplog.at_level(logging.WARNING):
        ds = GSVCitiesDataset(tmp_path, images_per_place=4, transform=None)
    assert 'Alpha: 1 of 3 places have fewer than 4 images and are skipped (2 images)' in caplog.text
    assert 'Beta: city skipped, none of its 2 places has 4 images or more' in caplog.text
    s = ds.summary
    assert (len(ds), s.places, s.images, s.skipped_places, s.skipped_cities) == (2, 2, 9, 3, ['Beta'])
    assert ds.labels == [0, 1]
    images, labels = ds[1]
    assert images.shape == (4, 3, 24, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [1, 1, 1, 1]
    # deterministic choice: the K most recent images
    ds2 = GSVCitiesDataset(tmp_path, cities=['Alpha'], images_per_place=4, random_sample=False)
    assert [p.name.split('_')[2] for p in ds2.places[1][:4]] == ['2019', '2018', '2017', '2016']
    # the second city's ids are offset by 10**5 as in the official loader
    write_city(tmp_path, 'Gamma', {3: 4})
    ds3 = GSVCitiesDataset(tmp_path, cities=['Alpha', 'Gamma'], images_per_place=4)
    assert ds3.labels == [0, 1, 100003]


def test_gsv_finds_images_whose_lat_lon_are_written_differently(tmp_path):
    csv_path = write_city(tmp_path, 'Alpha', {0: 4})
    img_dir = tmp_path / 'Images' / 'Alpha'
    first = sorted(img_dir.iterdir())[0]
    parts = first.name.split('_')
    parts[5] = parts[5] + '000'      # '45.5' -> '45.5000': same coordinate, other text
    first.rename(img_dir / '_'.join(parts))
    rows = read_city(tmp_path, 'Alpha')
    assert len(rows) == 4 and all(r['path'].is_file() for r in rows)
    assert csv_path.is_file()


def test_gsv_missing_image_names_file_and_row(tmp_path):
    write_city(tmp_path, 'Alpha', {0: 4, 1: 4})
    rows = read_city(tmp_path, 'Alpha')
    rows[5]['path'].unlink()
    with pytest.raises(DatasetError) as err:
        GSVCitiesDataset(tmp_path, images_per_place=4)
    msg = str(err.value)
    assert '1 of 8 images listed in' in msg and 'Dataframes/Alpha.csv row 5 (line 7)' in msg
    assert rows[5]['path'].name in msg


@pytest.mark.parametrize('column, value, message', [
    ('month', 'abc', "row 2 (line 4): column 'month' is 'abc', expected an integer"),
    ('month', '13', "row 2 (line 4): column 'month' is 13, expected 1..12"),
    ('lat', 'north', "row 2 (line 4): column 'lat' is 'north', expected a number"),
    ('place_id', '123456', "row 2 (line 4): column 'place_id' is 123456, expected 0..99999"),
    ('panoid', '', "row 2 (line 4): column 'panoid' is empty"),
    ('city_id', 'Paris', "row 2 (line 4): column 'city_id' is 'Paris', expected 'Alpha'"),
])
def test_gsv_malformed_dataframe_names_file_and_row(tmp_path, column, value, message):
    csv_path = write_city(tmp_path, 'Alpha', {0: 4})
    with open(csv_path, newline='') as f:
        rows = list(csv.reader(f))
    rows[3][GSV_HEADER.index(column)] = value
    with open(csv_path, 'w', newline='') as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(DatasetError) as err:
        GSVCitiesDataset(tmp_path, images_per_place=4)
    assert str(csv_path) in str(err.value) and message in str(err.value)


def test_gsv_malformed_dataframe_columns_and_layout(tmp_path):
    csv_path = write_city(tmp_path, 'Alpha', {0: 4})
    csv_path.write_text(csv_path.read_text().replace('northdeg', 'bearing', 1))
    with pytest.raises(DatasetError, match=r'Alpha.csv: missing column\(s\) northdeg'):
        GSVCitiesDataset(tmp_path)
    with pytest.raises(DatasetError, match='Dataframes.*not found'):
        GSVCitiesDataset(tmp_path / 'nowhere')
    with pytest.raises(DatasetError, match='Beta.csv: dataframe not found'):
        GSVCitiesDataset(tmp_path, cities=['Beta'])


# ---------------------------------------------------------------- make-train-set

def write_traversal(root: Path, name: str, xs: list[float], seed: int, y: float = 0.0,
                    yaw: list[float] | None = None) -> Traversal:
    folder = root / name
    lines = ['image,x,y' + (',yaw' if yaw else '')]
    for i, x in enumerate(xs):
        write_image(folder / f'{i:04d}.png', seed + i)
        lines.append(f'{i:04d}.png,{x},{y}' + (f',{yaw[i]}' if yaw else ''))
    (root / f'{name}.csv').write_text('\n'.join(lines) + '\n')
    return Traversal(folder, root / f'{name}.csv')


def test_make_train_set_places_from_two_traversals(tmp_path):
    # a 100 m route driven twice, a frame every 2 m (the second drive offset by 1 m sideways)
    xs = [2.0 * i for i in range(51)]
    a = write_traversal(tmp_path, 'monday', xs, 0)
    b = write_traversal(tmp_path, 'tuesday', [x + 0.5 for x in xs], 1000, y=1.0)
    out = tmp_path / 'gsv'
    s = build_train_set([a, b], out, city='Campus', radius=3.0, min_spacing=10.0, images_per_place=4,
                        max_images_per_place=6)
    assert s.places >= 8 and s.frames == 102 and s.images + s.frames_unused == 102
    ds = GSVCitiesDataset(out, images_per_place=4)
    assert len(ds) == s.places and ds.summary.images == s.images
    rows = read_city(out, 'Campus')
    by_place: dict[int, list[dict]] = {}
    for r in rows:
        by_place.setdefault(r['place_id'], []).append(r)
    import pandas as pd
    df = pd.read_csv(out / 'Dataframes' / 'Campus.csv')
    centres = []
    for pid, members in by_place.items():
        assert 4 <= len(members) <= 6
        assert len({m['year'] * 12 + m['month'] for m in members}) == 2      # both traversals in every place
        xs_place = df[df.place_id == pid][['x', 'y']].to_numpy()
        assert np.ptp(xs_place[:, 0]) <= 6.0 + 1e-6                          # within the radius of a centre
        centres.append(xs_place.mean(axis=0))
    centres = np.array(sorted(centres, key=lambda c: c[0]))
    assert np.all(np.diff(centres[:, 0]) > 10.0 - 6.0)                        # places do not overlap
    with pytest.raises(DatasetError, match='exists'):
        build_train_set([a, b], out, city='Campus', radius=3.0)


def test_make_train_set_heading_splits_opposite_directions(tmp_path):
    xs = [2.0 * i for i in range(20)]
    a = write_traversal(tmp_path, 'out', xs, 0, yaw=[0.0] * 20)
    b = write_traversal(tmp_path, 'back', xs[::-1], 100, yaw=[180.0] * 20)  # same road, facing back
    with pytest.raises(DatasetError, match='no place found'):
        build_train_set([a, b], tmp_path / 'gsv', city='Road', radius=3.0, images_per_place=4, max_yaw_diff=45.0)
    s = build_train_set([a, b], tmp_path / 'gsv2', city='Road', radius=3.0, images_per_place=4, max_yaw_diff=None)
    assert s.places > 0


def test_make_train_set_bad_poses(tmp_path):
    a = write_traversal(tmp_path, 'a', [0.0, 1.0, 2.0, 3.0], 0)
    text = a.poses.read_text().splitlines()
    text[3] = '0002.png,two,0'
    a.poses.write_text('\n'.join(text) + '\n')
    with pytest.raises(DatasetError, match=r"a.csv:4: column x: 'two' is not a number"):
        build_train_set([a], tmp_path / 'gsv', radius=5.0)
    text[3] = '0099.png,2,0'
    a.poses.write_text('\n'.join(text) + '\n')
    with pytest.raises(DatasetError, match=r'a.csv:4: image .*0099.png not found'):
        build_train_set([a], tmp_path / 'gsv', radius=5.0)
    a.poses.write_text('file,east,north\n')
    with pytest.raises(DatasetError, match='no position or latlon column'):
        build_train_set([a], tmp_path / 'gsv', radius=5.0)
    with pytest.raises(ConfigError, match='letters and digits'):
        build_train_set([a], tmp_path / 'gsv', city='my_city')


def test_make_train_set_from_bags(tmp_path):
    """Two drives recorded as bags (images + odometry), the second with a zero pose stamp gap."""
    from boq_vpr.inputs import bags
    from training.make_train_set import Traversal as T
    paths = []
    for d, storage in enumerate(('sqlite3', 'mcap')):
        path = tmp_path / f'drive{d}'
        with bags.BagWriter(path, storage) as w:
            for i in range(30):                      # 1 m per frame along x, 10 Hz, facing +x
                t = 1_000_000_000 + i * 100_000_000
                w.add_pose('/odom', t - 20_000_000, (i + 0.25 * d, 0.5 * d, 0.0), msgtype=bags.ODOMETRY)
                w.add_pose('/odom', t + 80_000_000, (i + 0.25 * d + 0.9, 0.5 * d, 0.0), msgtype=bags.ODOMETRY)
                rng = np.random.default_rng(100 * d + i)
                w.add_image('/camera/image_raw/compressed', rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), t,
                            fmt='jpeg')
        paths.append(path)
    s = build_train_set([T(bag=p) for p in paths], tmp_path / 'gsv', city='Bags', radius=1.6,
                        min_spacing=6.0, images_per_place=4, max_images_per_place=4)
    assert s.frames == 60 and s.places >= 4
    assert set(s.per_traversal_images) == {'drive0', 'drive1'}
    ds = GSVCitiesDataset(tmp_path / 'gsv', images_per_place=4)
    assert len(ds) == s.places
    images, _ = ds[0]
    assert images.shape == (4, 3, 24, 32)
    rows = read_city(tmp_path / 'gsv', 'Bags')
    assert {r['panoid'].split('-')[0] for r in rows} == {'drive0', 'drive1'}
    assert all(r['northdeg'] == 0 for r in rows)            # identity orientation: heading 0
    with pytest.raises(ConfigError, match='image folder with a poses CSV, or a bag'):
        T(images=tmp_path, bag=paths[0])
