"""Training transform: resize, RandAugment, ImageNet normalization (uint8 ``[3, H, W]`` in)."""
from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2

from boq_vpr.preprocessing import IMAGENET_MEAN, IMAGENET_STD


def train_transform(size: tuple[int, int], randaugment_ops: int = 3, magnitude: int = 9) -> v2.Compose:
    """Map a uint8 RGB tensor ``[3, h, w]`` to a normalized float ``[3, H, W]`` for training.

    Bilinear resize to ``size``, RandAugment(N=``randaugment_ops``) (skipped for 0), ImageNet
    mean/std.
    """
    steps: list = [v2.Resize(size, interpolation=InterpolationMode.BILINEAR, antialias=True)]
    if randaugment_ops > 0:
        steps.append(v2.RandAugment(num_ops=randaugment_ops, magnitude=magnitude,
                                    interpolation=InterpolationMode.BILINEAR))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)
