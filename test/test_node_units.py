"""The node's building blocks without DDS.

Message conversion and its rejections, the parameter table, statistics and log throttling, the
newest-frame slot, the attention overlay.
"""
from __future__ import annotations

import dataclasses
import threading
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from boq_vpr.inputs.images import FrameRejected, raw_encodings
from boq_vpr.ros.attention import attention_overlay
from boq_vpr.ros.convert import CvBridge, ImageConverter, stamp_to_ns
from boq_vpr.ros.parameters import (DETECTOR_PREFIX, ParamSpec, check_all, detector_specs, detector_values,
                                    field_docs, map_index_options, node_parameters, validate)
from boq_vpr.ros.stats import LatencyWindow, PipelineStats, RateMeter, Throttle


@pytest.fixture(scope='module')
def frame(heldout_dir) -> np.ndarray:
    from boq_vpr.inputs.images import list_images, load_image
    return load_image(list_images(heldout_dir / 'summer')[500])


def _raw(arr: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False, width: int | None = None
         ) -> SimpleNamespace:
    """sensor_msgs/Image fields for ``arr`` with ``pad`` bytes of row padding."""
    h, w = arr.shape[0], width or arr.shape[1]
    rows = arr.astype(arr.dtype.newbyteorder('>' if bigendian else '<')).view(np.uint8).reshape(h, -1)
    buf = np.zeros((h, rows.shape[1] + pad), np.uint8)
    buf[:, :rows.shape[1]] = rows
    return SimpleNamespace(height=h, width=w, encoding=encoding, step=buf.shape[1], is_bigendian=int(bigendian),
                           data=buf.tobytes())


# ----------------------------------------------------------------------------------------------
# conversion

@pytest.mark.parametrize('encoding, make', [
    ('rgb8', lambda rgb: rgb),
    ('bgr8', lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)),
    ('rgba8', lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)),
    ('bgra8', lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)),
])
@pytest.mark.parametrize('pad', [0, 5])
def test_colour_encodings_give_the_same_rgb_with_and_without_row_padding(frame, encoding, make, pad):
    out = ImageConverter('builtin').raw(_raw(np.ascontiguousarray(make(frame)), encoding, pad))
    assert out.dtype == np.uint8 and np.array_equal(out, frame)


def test_mono_bayer_and_16_bit_encodings(frame):
    conv = ImageConverter('builtin')
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    mono = conv.raw(_raw(gray, 'mono8', 3))
    assert mono.shape == frame.shape and np.array_equal(mono[:, :, 0], gray) and np.array_equal(mono[:, :, 1], gray)
    g16 = gray.astype(np.uint16) * 200
    for big in (False, True):
        m16 = conv.raw(_raw(g16, 'mono16', 2, bigendian=big))
        # stretched to the image's maximum: the same picture as the 8-bit one up to rounding
        assert np.abs(m16[:, :, 0].astype(int) - np.round(gray * 255.0 / gray.max())).max() <= 1
    bayer = np.zeros(frame.shape[:2], np.uint8)   # an RGGB mosaic of the frame
    bayer[0::2, 0::2] = frame[0::2, 0::2, 0]
    bayer[0::2, 1::2] = frame[0::2, 1::2, 1]
    bayer[1::2, 0::2] = frame[1::2, 0::2, 1]
    bayer[1::2, 1::2] = frame[1::2, 1::2, 2]
    demosaiced = conv.raw(_raw(bayer, 'bayer_rggb8'))
    assert demosaiced.shape == frame.shape
    assert np.abs(demosaiced.astype(int) - frame.astype(int)).mean() < 20   # interpolation, not a copy
    b16 = conv.raw(_raw(bayer.astype(np.uint16) * 256, 'bayer_rggb16', 4))   # via rosbags-image
    assert np.abs(b16.astype(int) - demosaiced.astype(int)).max() <= 2
    uyvy = np.full((gray.shape[0], gray.shape[1] * 2), 128, np.uint8)   # U Y V Y: grey, no chroma
    uyvy[:, 1::2] = gray
    grey = conv.raw(_raw(uyvy, 'uyvy', 6, width=gray.shape[1]))                              # via rosbags-image
    assert grey.shape == frame.shape and np.abs(grey[:, :, 0].astype(int) - grey[:, :, 2]).max() <= 1
    assert np.corrcoef(grey[:, :, 1].ravel(), gray.ravel())[0, 1] > 0.99
    for enc in ('rgb8', 'bgr8', 'mono8', 'mono16', 'bayer_grbg8', 'yuv422', 'rgba16'):
        assert enc in raw_encodings()


@pytest.mark.parametrize('fields, reason', [
    ({'step': 64 * 3 + 7}, 'wrong_step'),                  # data is tightly packed: the step is wrong
    ({'step': 10}, 'wrong_step'),                          # smaller than a row
    ({'data': bytes(100)}, 'truncated_data'),
    ({'encoding': 'rgb9'}, 'unknown_encoding'),
    ({'encoding': 'nv12'}, 'unknown_encoding'),            # planar 4:2:0 is not supported
    ({'height': 0}, 'empty_image'),
    ({'width': 0, 'height': 0, 'step': 0, 'data': b''}, 'empty_image'),
    ({'width': 20000, 'height': 20000, 'step': 60000}, 'too_large'),   # refused before its size is checked
])
def test_malformed_raw_images_are_rejected_with_a_reason(frame, fields, reason):
    msg = _raw(frame, 'rgb8')
    for k, v in fields.items():
        setattr(msg, k, v)
    with pytest.raises(FrameRejected) as err:
        ImageConverter('builtin').raw(msg)
    assert err.value.reason == reason and str(err.value)


def test_compressed_images_and_their_rejections(frame):
    conv = ImageConverter('builtin')
    ok, png = cv2.imencode('.png', cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    ok2, jpg = cv2.imencode('.jpg', cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok and ok2
    png, jpg = png.tobytes(), jpg.tobytes()
    assert np.array_equal(conv.compressed(SimpleNamespace(format='png', data=png)), frame)
    decoded = conv.compressed(SimpleNamespace(format='rgb8; jpeg compressed bgr8', data=jpg))
    assert decoded.shape == frame.shape and np.abs(decoded.astype(int) - frame.astype(int)).mean() < 6
    cases = [
        (SimpleNamespace(format='jpeg', data=jpg[:len(jpg) // 2]), 'corrupt_compressed'),    # truncated JPEG
        (SimpleNamespace(format='png', data=png[:len(png) - 20]), 'corrupt_compressed'),     # truncated PNG
        (SimpleNamespace(format='jpeg', data=bytes(range(256)) * 3), 'corrupt_compressed'),  # not an image
        (SimpleNamespace(format='', data=b'\x00' * 64), 'corrupt_compressed'),               # unknown bytes
        (SimpleNamespace(format='jpeg', data=b''), 'empty_image'),
        (SimpleNamespace(format='16UC1; compressedDepth png', data=png), 'unsupported_format'),
    ]
    for msg, reason in cases:
        with pytest.raises(FrameRejected) as err:
            conv.compressed(msg)
        assert err.value.reason == reason, (msg.format, str(err.value))


@pytest.mark.parametrize('ext', ['.png', '.jpg'])
def test_huge_compressed_images_are_refused_from_their_header(ext):
    """A small file declaring 72 Mpx is refused before decoding; a large frame under the limit decodes."""
    from boq_vpr.inputs.images import MAX_IMAGE_PIXELS
    ok, huge = cv2.imencode(ext, np.zeros((9000, 8000), np.uint8))
    assert ok and 9000 * 8000 > MAX_IMAGE_PIXELS and huge.nbytes < 2_000_000
    with pytest.raises(FrameRejected) as err:
        ImageConverter('builtin').compressed(SimpleNamespace(format=ext[1:], data=huge.tobytes()))
    assert err.value.reason == 'too_large' and '9000' in str(err.value)
    ok, big = cv2.imencode(ext, np.zeros((3000, 4000), np.uint8))
    decoded = ImageConverter('builtin').compressed(SimpleNamespace(format=ext[1:], data=big.tobytes()))
    assert decoded.shape == (3000, 4000, 3)


def test_ros_messages_convert_too(frame):
    sensor_msgs = pytest.importorskip('sensor_msgs.msg', reason='needs the sensor_msgs Python package')
    from boq_vpr.ros.client import compressed_msg, image_msg
    conv = ImageConverter()
    for enc in ('rgb8', 'bgr8', 'rgba8', 'bgra8'):
        msg = image_msg(frame, 5, enc)
        assert isinstance(msg, sensor_msgs.Image) and np.array_equal(conv.raw(msg), frame)
    assert np.array_equal(conv.compressed(compressed_msg(frame, 5, 'png')), frame)


def test_stamps():
    assert stamp_to_ns(SimpleNamespace(sec=12, nanosec=5)) == 12_000_000_005
    with pytest.raises(FrameRejected) as err:
        stamp_to_ns(SimpleNamespace(sec=1, nanosec=1_500_000_000))
    assert err.value.reason == 'bad_stamp'


def _odometry(sec=3, nanosec=0, position=(1.0, 2.0, 3.0), orientation=(0.0, 0.0, 0.0, 2.0)) -> SimpleNamespace:
    p = SimpleNamespace(x=position[0], y=position[1], z=position[2])
    q = SimpleNamespace(x=orientation[0], y=orientation[1], z=orientation[2], w=orientation[3])
    return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec), frame_id='odom'),
                           pose=SimpleNamespace(pose=SimpleNamespace(position=p, orientation=q)))


def test_odometry_poses_and_their_rejections():
    from boq_vpr.ros.odometry import odometry_pose
    assert odometry_pose(_odometry()) == (3_000_000_000, (1.0, 2.0, 3.0), (0.0, 0.0, 0.0, 1.0), 'odom')
    cases = [(_odometry(nanosec=1_500_000_000), 'bad_stamp'),
             (_odometry(position=(float('nan'), 0.0, 0.0)), 'not_finite'),
             (_odometry(orientation=(0.0, 0.0, 0.0, 0.0)), 'bad_quaternion')]
    for msg, reason in cases:
        with pytest.raises(FrameRejected) as err:
            odometry_pose(msg)
        assert err.value.reason == reason


def test_cv_bridge_converter_needs_cv_bridge():
    if CvBridge is not None:
        assert ImageConverter('cv_bridge').name == 'cv_bridge'
    else:
        with pytest.raises(Exception, match='cv_bridge is not installed'):
            ImageConverter('cv_bridge')
        assert ImageConverter('auto').name == 'builtin'
    with pytest.raises(ValueError, match='valid'):
        ImageConverter('pil')


# ----------------------------------------------------------------------------------------------
# parameters

def test_detector_fields_are_parameters_described_from_the_dataclass():
    from boq_vpr.detection import DetectorConfig
    specs = {s.name: s for s in detector_specs()}
    docs = field_docs(DetectorConfig)
    for f in dataclasses.fields(DetectorConfig):
        if f.default is None:   # optional (automatic) fields are not ROS parameters
            assert DETECTOR_PREFIX + f.name not in specs
            continue
        spec = specs[DETECTOR_PREFIX + f.name]
        assert spec.default == f.default and type(spec.default) is type(f.default)
        assert spec.description == docs[f.name] and len(spec.description) > 10
    assert specs['loop_closure.mode'].choices == ('slam', 'localization')
    assert specs['loop_closure.mode'].read_only
    # the detector's own validation accepts the defaults
    assert DetectorConfig.from_dict(detector_values({s.name: s.default for s in specs.values()})) == DetectorConfig()


def test_every_parameter_is_declared_once_with_a_description_and_valid_default():
    specs = node_parameters()
    assert len({s.name for s in specs}) == len(specs)
    for s in specs:
        assert s.description, s.name
        assert validate(s, s.default) is None, s.name
    names = {s.name for s in specs}
    for required in ('model.name', 'model.weights', 'encoder.backend', 'encoder.precision', 'encoder.onnx_path',
                     'map.path', 'loop_closure.mode', 'loop_closure.exclusion_time_s', 'loop_closure.min_score',
                     'loop_closure.keyframe_min_distance_m', 'image_transport', 'use_odom', 'qos.reliability',
                     'qos.depth', 'attention.enable', 'map.save_on_shutdown'):
        assert required in names


def test_validation_of_values():
    choice = ParamSpec('x', 'a', 'd', choices=('a', 'b'))
    assert validate(choice, 'b') is None and 'not allowed' in validate(choice, 'c')
    rng = ParamSpec('y', 1.0, 'd', range=(0.0, 2.0))
    assert validate(rng, 2) is None and 'outside' in validate(rng, 2.5) and 'must be float' in validate(rng, 'z')
    assert 'must be int' in validate(ParamSpec('z', 1, 'd'), True)
    arr = ParamSpec('q', [0, 1], 'd', item_range=(0, 3))
    assert validate(arr, [3]) is None and 'outside' in validate(arr, [4]) and 'non-empty' in validate(arr, [])
    assert check_all([choice, rng], {'x': 'c', 'y': 1.0, 'other': 5}) == [validate(choice, 'c')]


def test_map_index_options_pass_only_what_the_index_type_takes():
    values = {'map.index_options.nlist': 64, 'map.index_options.hnsw_m': 16, 'map.index_options.pca_dim': 0,
              'map.index_options.train_size': 500}
    assert map_index_options(values, 'ivfpq') == {'nlist': 64, 'train_size': 500}
    assert map_index_options(values, 'hnsw') == {'hnsw_m': 16, 'train_size': 500}
    assert map_index_options(values, 'flat') == {'train_size': 500}


# ----------------------------------------------------------------------------------------------
# statistics, throttling, the frame slot

class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_throttle_passes_the_first_then_one_per_period_and_counts_the_rest():
    clock = FakeClock()
    th = Throttle(5.0, clock)
    assert th.check('wrong_step') == 0
    assert th.check('wrong_step') is None and th.check('wrong_step') is None
    assert th.check('truncated_data') == 0     # other kinds are throttled separately
    clock.t += 5.0
    assert th.check('wrong_step') == 2         # two suppressed since the last report


def test_rate_meter_and_latency_window():
    clock = FakeClock()
    rate = RateMeter(5.0, clock)
    for _ in range(11):
        rate.tick()
        clock.t += 0.1
    assert rate.rate() == pytest.approx(10.0)
    clock.t += 10.0
    assert rate.rate() == 0.0                  # nothing in the window any more
    lat = LatencyWindow(size=100)
    for i in range(1, 201):
        lat.add('encode', i / 1000.0)
    s = lat.summary_ms()['encode']
    assert s['n'] == 100 and s['p50'] == pytest.approx(150.5) and s['max'] == pytest.approx(200.0)
    stats = PipelineStats()
    stats.reject('wrong_step')
    stats.reject('wrong_step')
    stats.count('frames_received', 3)
    counts, rejected = stats.snapshot()
    assert counts == {'rejected': 2, 'frames_received': 3} and rejected == {'wrong_step': 2}


def test_frame_slot_keeps_the_newest_and_reports_drops():
    from boq_vpr.ros.worker import FrameSlot
    slot = FrameSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True and slot.put(3) is True
    assert slot.take(0.01) == 3 and slot.take(0.01) is None
    got = []
    t = threading.Thread(target=lambda: got.append(slot.take(5.0)))
    t.start()
    slot.put(4)
    t.join(5.0)
    assert got == [4]
    slot.close()
    assert slot.take(5.0) is None


# ----------------------------------------------------------------------------------------------
# attention overlay

def test_attention_overlay_tiles_the_chosen_queries(frame):
    grid = (2, 4)
    att = np.zeros((3, 8), np.float32)
    att[0, 0] = 1.0      # query 0 looks at the top-left cell
    att[2, 7] = 1.0      # query 2 at the bottom-right one
    out = attention_overlay(frame, att, grid, [0, 2], alpha=1.0)
    h, w = frame.shape[:2]
    assert out.shape == (h, 2 * w, 3) and out.dtype == np.uint8
    # JET colour map: hot (red) where the query attends, cold (blue) elsewhere
    assert out[2, 2, 0] > out[2, 2, 2] and out[h - 3, w - 3, 2] > out[h - 3, w - 3, 0]
    assert out[h - 3, 2 * w - 3, 0] > out[h - 3, 2 * w - 3, 2]
    with pytest.raises(ValueError, match='out of range'):
        attention_overlay(frame, att, grid, [3])
    with pytest.raises(ValueError, match='grid'):
        attention_overlay(frame, att, (3, 3), [0])


# ----------------------------------------------------------------------------------------------
# the node's start-up (configure) without ROS

def _node_values(**overrides):
    from boq_vpr.ros.parameters import node_parameters
    values = {s.name: s.default for s in node_parameters()}
    values.update(overrides)
    return values


def test_configure_with_keep_aspect_on_onnxruntime_processes_camera_frames(frame, tmp_path, monkeypatch):
    """keep_aspect on a backend that used to be fixed-shape.

    The node's pipeline takes 640x480 frames, and the warm-up ran at the camera's size (encoder.warmup_image_size).
    """
    import logging
    import cv2
    from boq_vpr.ros.startup import build_pipeline
    monkeypatch.setenv('BOQ_VPR_CACHE', str(tmp_path / 'cache'))
    values = _node_values(**{'model.name': 'resnet18_1024', 'model.weights': 'random', 'model.image_height': 64,
                             'model.image_width': 64, 'model.resize_mode': 'keep_aspect',
                             'encoder.backend': 'onnxruntime', 'encoder.device': 'cpu', 'encoder.precision': 'fp32',
                             'encoder.warmup_image_size': [480, 640], 'loop_closure.false_alarm_rate': 0.0})
    pipeline, path, _ = build_pipeline(values, logging.getLogger('test'))
    assert path is None and pipeline.encoder.backend.name == 'onnxruntime'
    assert pipeline.encoder.times.images == 1          # the warm-up frame
    camera = cv2.resize(frame, (640, 480))
    out = pipeline.process(lambda: camera, 1_000_000_000)
    assert out.result.keyframe_id == 0 and out.seconds['encode'] > 0
    with pytest.raises(Exception, match='warmup_image_size'):
        build_pipeline(_node_values(**{'encoder.warmup_image_size': [480, 0]}), logging.getLogger('test'))
