"""Geometric verification of a loop candidate.

Local features (OpenCV ORB or SIFT), Lowe's ratio test, and RANSAC on the fundamental matrix (or
the essential matrix when the camera matrix is known); a pair is verified when enough matches are
inliers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from ..errors import ConfigError

log = logging.getLogger(__name__)


def _orb(max_features: int):
    # Small patches so that keypoints are found on thumbnails too (OpenCV's default is 31 px).
    return cv2.ORB_create(nfeatures=max_features, edgeThreshold=15, patchSize=15, fastThreshold=10)


def _sift(max_features: int):
    return cv2.SIFT_create(nfeatures=max_features)


# name -> (detector constructor, matcher norm)
FEATURES: dict[str, tuple[Callable[[int], object], int]] = {
    'orb': (_orb, cv2.NORM_HAMMING),
    'sift': (_sift, cv2.NORM_L2),
}


@dataclass
class Verification:
    """The outcome of verifying one image pair."""

    verified: bool
    inliers: int
    matches: int          # matches that passed the ratio test
    keypoints: tuple[int, int]
    reason: str = ''


@dataclass
class Features:
    """Keypoint coordinates ``[N, 2]`` (pixels of the working image) and descriptors."""

    points: np.ndarray
    descriptors: np.ndarray | None
    size: tuple[int, int]  # height, width of the working image


class GeometricVerifier:
    """Checks that two images show the same place up to a camera motion.

    ``features``: 'orb' or 'sift'; ``ratio``: Lowe's ratio test threshold; ``ransac_threshold_px``:
    the epipolar distance in pixels of the working image; ``min_inliers``: inliers needed to
    accept; ``working_side``: images are resized so that their longer side is this many pixels
    (small thumbnails are enlarged so that the detectors find keypoints); ``camera_matrix``: 3x3
    intrinsics of the working image, switching RANSAC from the fundamental to the essential matrix.
    """

    def __init__(self, features: str = 'orb', max_features: int = 1000, ratio: float = 0.8,
                 ransac_threshold_px: float = 3.0, min_inliers: int = 25, working_side: int = 320,
                 camera_matrix: np.ndarray | None = None) -> None:
        if features not in FEATURES:
            raise ConfigError(f'unknown feature type {features!r}; valid: {", ".join(FEATURES)}')
        if not 0.0 < ratio <= 1.0:
            raise ConfigError(f'ratio must be in (0, 1], got {ratio}')
        if min_inliers < 8:
            raise ConfigError(f'min_inliers must be >= 8 (a fundamental matrix needs 8 points), got {min_inliers}')
        if ransac_threshold_px <= 0 or working_side < 32 or max_features < 8:
            raise ConfigError('ransac_threshold_px must be > 0, working_side >= 32 and max_features >= 8')
        self.features = features
        make, norm = FEATURES[features]
        self._detector = make(int(max_features))
        self._matcher = cv2.BFMatcher(norm)
        self.ratio = float(ratio)
        self.ransac_threshold_px = float(ransac_threshold_px)
        self.min_inliers = int(min_inliers)
        self.working_side = int(working_side)
        self.camera_matrix = None if camera_matrix is None else np.asarray(camera_matrix, np.float64).reshape(3, 3)

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        img = np.asarray(image)
        if img.ndim == 3:
            img = cv2.cvtColor(img[:, :, :3], cv2.COLOR_RGB2GRAY)
        if img.ndim != 2 or img.size == 0:
            raise ConfigError(f'geometric verification needs a gray or RGB image, got shape {img.shape}')
        if img.dtype != np.uint8:
            img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        h, w = img.shape
        scale = self.working_side / max(h, w)
        if abs(scale - 1.0) > 1e-3:
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
            img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interp)
        return img

    def extract(self, image: np.ndarray) -> Features:
        """Keypoints and descriptors of one image (gray or RGB uint8)."""
        img = self._prepare(image)
        kps, desc = self._detector.detectAndCompute(img, None)
        pts = np.array([k.pt for k in kps], np.float32).reshape(-1, 2)
        return Features(pts, desc, img.shape[:2])

    def verify(self, a: np.ndarray | Features, b: np.ndarray | Features) -> Verification:
        """Match two images (or their extracted features) and count RANSAC inliers."""
        fa = a if isinstance(a, Features) else self.extract(a)
        fb = b if isinstance(b, Features) else self.extract(b)
        nk = (len(fa.points), len(fb.points))
        if fa.descriptors is None or fb.descriptors is None or min(nk) < 2:
            return Verification(False, 0, 0, nk, 'too few keypoints')
        pairs = self._matcher.knnMatch(fa.descriptors, fb.descriptors, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < self.ratio * p[1].distance]
        if len(good) < 8:
            return Verification(False, 0, len(good), nk, f'{len(good)} matches after the ratio test (< 8)')
        pa = fa.points[[m.queryIdx for m in good]]
        pb = fb.points[[m.trainIdx for m in good]]
        if self.camera_matrix is not None:
            model, mask = cv2.findEssentialMat(pa, pb, self.camera_matrix, cv2.RANSAC, 0.999, self.ransac_threshold_px)
        else:
            model, mask = cv2.findFundamentalMat(pa, pb, cv2.FM_RANSAC, self.ransac_threshold_px, 0.999)
        # Without a model OpenCV leaves the mask uninitialized: no inliers then.
        inliers = int(np.count_nonzero(mask)) if model is not None and mask is not None else 0
        ok = inliers >= self.min_inliers
        return Verification(ok, inliers, len(good), nk,
                            '' if ok else f'{inliers} RANSAC inliers (< min_inliers {self.min_inliers})')
