"""The input check every backend applies to a batch before running it."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ImageError


def check_input(batch: torch.Tensor | np.ndarray, image_size: tuple[int, int] | None, backend: str) -> None:
    """Raise ImageError naming the expected shape when ``batch`` does not fit the graph."""
    shape = tuple(batch.shape)
    if len(shape) != 4 or shape[1] != 3 or shape[0] < 1:
        raise ImageError(f'{backend}: expected a batch [N, 3, H, W], got {list(shape)}')
    if image_size is not None and tuple(shape[2:]) != tuple(image_size):
        raise ImageError(f'{backend}: expected input [N, 3, {image_size[0]}, {image_size[1]}], got {list(shape)}; '
                         'preprocess to the exported size or export with --dynamic-size')
