"""BoQ cross-attention maps rendered over the input image (the paper's interpretability figure)."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np


def attention_overlay(rgb: np.ndarray, attention: np.ndarray, grid: tuple[int, int], queries: Sequence[int],
                      alpha: float = 0.5) -> np.ndarray:
    """One heat map per chosen query over ``rgb``, side by side: RGB uint8 ``H x (len(queries)*W) x 3``.

    ``attention``: ``[Q, h*w]`` cross-attention of one image (one BoQ block); ``grid``: ``(h, w)``, the
    local feature map the attention runs over, which covers the whole (resized) input image.
    """
    att = np.asarray(attention, dtype=np.float32)
    h, w = grid
    if att.ndim != 2 or att.shape[1] != h * w:
        raise ValueError(f'attention must be [Q, {h * w}] for a {h}x{w} grid, got {att.shape}')
    bad = [q for q in queries if not 0 <= q < att.shape[0]]
    if bad:
        raise ValueError(f'queries {bad} out of range: the model has {att.shape[0]} queries')
    height, width = rgb.shape[:2]
    tiles = []
    for q in queries:
        m = att[q].reshape(h, w)
        lo, hi = float(m.min()), float(m.max())
        m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
        m = cv2.resize(m, (width, height), interpolation=cv2.INTER_CUBIC)
        heat = cv2.applyColorMap(np.clip(m * 255.0, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
        heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
        tiles.append(cv2.addWeighted(heat, float(alpha), rgb, 1.0 - float(alpha), 0.0))
    return np.ascontiguousarray(np.concatenate(tiles, axis=1))
