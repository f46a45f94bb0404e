"""A non-learned place descriptor: downsampled, patch-normalized grey pixels (as in SeqSLAM).

Used as the baseline that a learned model must beat (``boq-vpr bench recall``). Each image is
converted to grey, resized with area averaging to ``size`` (height, width), and every
non-overlapping ``patch`` x ``patch`` block is normalized to zero mean and unit variance
(SeqSLAM's patch normalization, which removes local brightness and contrast). The result is
flattened and L2-normalized, so that the cosine of two descriptors is the normalized
cross-correlation of the two patch-normalized images and retrieval runs exactly as for BoQ
descriptors. OpenCV does the resizing; the few lines of patch normalization have no library
equivalent.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

DEFAULT_SIZE = (32, 64)     # (height, width): SeqSLAM-like 64x32 frames
DEFAULT_PATCH = 8


def pixel_descriptors(images: Sequence[np.ndarray], size: tuple[int, int] = DEFAULT_SIZE,
                      patch: int = DEFAULT_PATCH) -> np.ndarray:
    """RGB uint8 images ``H x W x 3`` -> ``[N, size[0] * size[1]]`` float32, unit L2 norm."""
    h, w = size
    if h % patch or w % patch:
        raise ValueError(f'size {h}x{w} must be a multiple of the patch size {patch}')
    out = np.empty((len(images), h * w), np.float32)
    for i, im in enumerate(images):
        grey = cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2GRAY) if im.ndim == 3 else im
        small = cv2.resize(grey, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
        blocks = small.reshape(h // patch, patch, w // patch, patch)
        mean = blocks.mean(axis=(1, 3), keepdims=True)
        std = blocks.std(axis=(1, 3), keepdims=True)
        norm = (blocks - mean) / np.maximum(std, 1e-3)
        out[i] = norm.reshape(-1)
    lengths = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(lengths, 1e-12)
