"""Evaluation input: bag images -> descriptors and their ground truth.

Descriptors are ``Frames``, saved and reloaded so that sweeps do not re-encode) and their ground
truth.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from ..inputs import bags
from ..inputs import ground_truth as gtm
from ..errors import BagError, ConfigError
from ..inputs.ground_truth import GroundTruth
from ..inputs.images import decode_to_rgb8
from ..values import latency_summary

log = logging.getLogger(__name__)

FRAMES_FORMAT = 'boq_vpr-frames'
FRAMES_VERSION = 1


# ------------------------------------------------------------------------------------------ helpers

class ImageStore:
    """Images kept for geometric verification, losslessly PNG-compressed in memory."""

    def __init__(self) -> None:
        self._png: dict[int, bytes] = {}

    def put(self, index: int, rgb: np.ndarray) -> None:
        ok, buf = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:  # pragma: no cover - OpenCV fails only on invalid input
            raise BagError(f'image {index} cannot be stored')
        self._png[int(index)] = buf.tobytes()

    def get(self, index: int) -> np.ndarray | None:
        data = self._png.get(int(index))
        return None if data is None else decode_to_rgb8(data)

    def __len__(self) -> int:
        return len(self._png)


@dataclass
class Frames:
    """One image topic of one bag, in stamp order, as descriptors.

    Descriptors ``[N, D]``, stamps, message index on the topic, camera frame ids, ground truth,
    optional odometry positions ``[N, 3]``, what reading met (``report``) and the time per stage
    (``timings``, milliseconds).
    """

    descriptors: np.ndarray
    stamps_ns: np.ndarray
    indices: np.ndarray
    frame_ids: list[str]
    source: str
    topic: str
    fingerprint: str
    gt: GroundTruth = field(default_factory=GroundTruth)
    odom: np.ndarray | None = None
    report: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    encoder: dict = field(default_factory=dict)
    images: ImageStore | None = None

    def __len__(self) -> int:
        return int(self.descriptors.shape[0])

    def save(self, path: str | Path) -> Path:
        """Write descriptors, stamps, ground truth and metadata to ``path`` (``.npz``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {'format': FRAMES_FORMAT, 'version': FRAMES_VERSION, 'source': self.source, 'topic': self.topic,
                'fingerprint': self.fingerprint, 'frame_ids': self.frame_ids, 'report': self.report,
                'timings': self.timings, 'encoder': self.encoder, 'gt_source': self.gt.source}
        arrays = {'descriptors': self.descriptors, 'stamps_ns': self.stamps_ns, 'indices': self.indices,
                  'meta': np.array(json.dumps(meta))}
        if self.gt.positions is not None:
            arrays['gt_positions'] = self.gt.positions
        if self.gt.frames is not None:
            arrays['gt_frames'] = self.gt.frames
        if self.odom is not None:
            arrays['odom'] = self.odom
        tmp = path.with_name(path.name + '.tmp.npz')
        np.savez(tmp, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> 'Frames':
        """Read a file written by ``save``; ``BagError`` naming it when it is not one."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z['meta']))
                if meta.get('format') != FRAMES_FORMAT:
                    raise BagError(f'{path}: not a descriptor file of boq-vpr evaluate (--save-descriptors)')
                gt = GroundTruth(z['gt_positions'] if 'gt_positions' in z else None,
                                 z['gt_frames'] if 'gt_frames' in z else None, meta.get('gt_source', ''))
                return cls(z['descriptors'].astype(np.float32), z['stamps_ns'].astype(np.int64),
                           z['indices'].astype(np.int64), list(meta['frame_ids']), meta['source'], meta['topic'],
                           meta['fingerprint'], gt, z['odom'] if 'odom' in z else None, meta.get('report', {}),
                           meta.get('timings', {}), meta.get('encoder', {}))
        except (OSError, ValueError, KeyError) as err:
            raise BagError(f'{path}: cannot read descriptors ({err}); write them with --save-descriptors') from err


def read_frames(bag: str | Path, encoder: Any, topic: str | None = None, *, stamp: str = 'header',
                every: int = 1, max_frames: int | None = None, keep_images: bool = False,
                progress: bool = True) -> Frames:
    """Read and encode the images of one topic.

    Frames come back sorted by stamp (stamps that go backwards in the bag are counted in
    ``report['out_of_order_stamps']`` and reordered).
    """
    bag = Path(bag)
    report = bags.ReadReport()
    stamps, indices, frame_ids, blocks = [], [], [], []
    read_ms: list[float] = []
    store = ImageStore() if keep_images else None
    t_pre0, t_inf0, n0 = encoder.times.preprocess, encoder.times.infer, encoder.times.images
    topics = bags.list_topics(bag)
    chosen = bags.select_topic(bag, topics, topic, bags.IMAGE_TYPES, 'image')
    total = -(-chosen.count // every)
    if max_frames is not None:
        total = min(total, max_frames)
    it = bags.iter_images(bag, chosen.name, stamp=stamp, report=report, max_frames=max_frames, every=every)

    def images():
        while True:
            t0 = time.perf_counter()
            try:
                image = next(it)
            except StopIteration:
                return
            read_ms.append(1e3 * (time.perf_counter() - t0))
            stamps.append(image.stamp_ns)
            indices.append(image.index)
            frame_ids.append(image.frame_id)
            if store is not None:
                store.put(len(stamps) - 1, image.rgb)
            yield image.rgb

    with tqdm(total=total, unit='img', desc=f'encode {bag.name}', file=sys.stderr,
              disable=None if progress else True) as bar:
        for block in encoder.encode_iter(images()):
            blocks.append(block)
            bar.update(len(block))
    if not stamps:
        raise BagError(f'{bag}:{chosen.name}: no usable image ({report.messages} messages, '
                       f'{len(report.skipped)} skipped)')
    n = encoder.times.images - n0
    timings = {'read_decode_ms': latency_summary(read_ms),
               'preprocess_ms_per_image': 1e3 * (encoder.times.preprocess - t_pre0) / max(n, 1),
               'infer_ms_per_image': 1e3 * (encoder.times.infer - t_inf0) / max(n, 1),
               'encode_batch_size': int(encoder.batch_size)}
    desc = np.concatenate(blocks)
    frames = Frames(desc, np.array(stamps, np.int64), np.array(indices, np.int64), frame_ids, str(bag),
                    chosen.name, encoder.fingerprint, report=report.to_dict(), timings=timings,
                    encoder=encoder.describe(), images=store)
    return sort_by_stamp(frames)


def sort_by_stamp(frames: Frames) -> Frames:
    """Frames in stamp order (stable); reports how many were out of order."""
    order = np.argsort(frames.stamps_ns, kind='stable')
    reordered = not np.array_equal(order, np.arange(len(order)))
    frames.report['reordered_to_stamp_order'] = bool(reordered)
    if not reordered:
        return frames
    log.warning('%s:%s: %d frames have stamps that go backwards in the bag; evaluating in stamp order',
                frames.source, frames.topic, frames.report.get('out_of_order_stamps', 0))
    store = frames.images
    if store is not None:
        new = ImageStore()
        for new_i, old_i in enumerate(order):
            new._png[new_i] = store._png[int(old_i)]
        store = new
    return dataclasses.replace(
        frames, descriptors=frames.descriptors[order], stamps_ns=frames.stamps_ns[order],
        indices=frames.indices[order], frame_ids=[frames.frame_ids[i] for i in order],
        gt=frames.gt.subset(order) if len(frames.gt) == len(order) else frames.gt,
        odom=frames.odom[order] if frames.odom is not None else None, images=store)


def load_images(frames: Frames, bag: str | Path, stamp: str = 'header') -> None:
    """Fill ``frames.images`` from the bag (for geometric verification with saved descriptors)."""
    by_index = {int(i): k for k, i in enumerate(frames.indices)}
    store = ImageStore()
    for image in bags.iter_images(bag, frames.topic, stamp=stamp):
        k = by_index.get(image.index)
        if k is not None:
            store.put(k, image.rgb)
    missing = len(frames) - len(store)
    if missing:
        raise BagError(f'{bag}: {missing} frames of the saved descriptors are not in the bag; '
                       'are they from another bag?')
    frames.images = store


GT_FORMS = "auto, none, frames, csv:PATH, topic:/pose_topic, or a CSV path"


def ground_truth_for(bag: str | Path | None, stamps_ns: np.ndarray, spec: str | None = 'auto',
                     max_dt_s: float = 0.5) -> GroundTruth:
    """Ground truth at ``stamps_ns``.

    ``spec``: 'auto' (the bag's ``make-bag`` CSV when present), 'none', 'frames' (frame order),
    'csv:PATH' or a CSV path, 'topic:/name' (a pose topic of the bag: Odometry, PoseStamped or
    PoseWithCovarianceStamped).
    """
    spec = spec or 'auto'
    n = len(stamps_ns)
    if spec == 'none':
        return GroundTruth.empty(n, 'none')
    if spec == 'frames':
        return gtm.from_frame_order(n)
    if spec == 'auto':
        if bag is not None and bags.ground_truth_sidecar(bag).is_file():
            sidecar = bags.ground_truth_sidecar(bag)
            log.info('ground truth of %s: %s', bag, sidecar)
            return gtm.from_csv(sidecar, stamps_ns, max_dt_s)
        return GroundTruth.empty(n, 'none')
    if spec.startswith('topic:'):
        if bag is None:
            raise ConfigError(f'--gt {spec}: a pose topic needs the bag')
        return gtm.from_poses(bags.read_poses(bag, spec[len('topic:'):]), stamps_ns, max_dt_s,
                              source=f'{bag}:{spec[len("topic:"):]}')
    path = Path(spec[len('csv:'):] if spec.startswith('csv:') else spec)
    if not path.is_file():
        raise ConfigError(f'ground truth {spec!r}: no such file; give one of {GT_FORMS}')
    return gtm.from_csv(path, stamps_ns, max_dt_s)


# ------------------------------------------------------------------------------------------ parameters
