"""RGB uint8 images -> network input, exactly as the official BoQ transform.

Official transform: ``ToTensor`` (float in [0, 1]) -> ``Resize(size, BICUBIC, antialias=True)`` ->
``Normalize(ImageNet mean, std)``. This module calls the same kernel torchvision's Resize calls
(``torch.nn.functional.interpolate(mode='bicubic', antialias=True)``) instead of re-implementing
it with OpenCV: OpenCV's cubic resize has no antialiasing and would not match (measured in
``test/test_preprocessing.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .errors import ImageError

if TYPE_CHECKING:      # torch is imported where a tensor is made, so that the resize modes list without it
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ('fixed', 'keep_aspect')


def check_image(image: np.ndarray, what: str = 'image') -> np.ndarray:
    """Validate an ``H x W x 3`` RGB image: uint8, or float in [0, 1] without NaN/inf."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f'{what}: expected a numpy array H x W x 3, got {type(image).__name__}')
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f'{what}: expected shape H x W x 3 (RGB), got {image.shape}; '
                         'convert grayscale/RGBA/BGR first (boq_vpr.inputs.images.to_rgb8)')
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f'{what}: empty image {image.shape}')
    if image.dtype == np.uint8:
        return image
    if image.dtype in (np.float32, np.float64, np.float16):
        if not np.isfinite(image).all():
            raise ImageError(f'{what}: contains NaN or infinite values')
        lo, hi = float(image.min()), float(image.max())
        if lo < 0.0 or hi > 1.0:
            raise ImageError(f'{what}: float images must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]; '
                             'pass uint8 RGB or scale to [0, 1]')
        return image
    raise ImageError(f'{what}: unsupported dtype {image.dtype}; expected uint8 RGB (or float in [0, 1])')


def target_size(height: int, width: int, size: tuple[int, int], mode: str = 'fixed', multiple: int = 1
                ) -> tuple[int, int]:
    """Network input size for an image of ``height x width``.

    ``fixed``: always ``size``. ``keep_aspect``: height ``size[0]``, width scaled to keep the aspect
    ratio, rounded to a multiple of ``multiple`` (14 for DINOv2).
    """
    if mode == 'fixed':
        return size
    if mode == 'keep_aspect':
        h = size[0]
        w = max(multiple, int(round(width * h / height / multiple)) * multiple)
        return h, w
    raise ImageError(f'unknown resize mode {mode!r}; valid: {", ".join(RESIZE_MODES)}')


@dataclass(frozen=True)
class Preprocessor:
    """Turns RGB images into normalized ``float32`` tensors ``[N, 3, H, W]``."""

    size: tuple[int, int]
    mode: str = 'fixed'
    multiple: int = 1

    def __post_init__(self) -> None:
        if self.mode not in RESIZE_MODES:
            raise ImageError(f'unknown resize mode {self.mode!r}; valid: {", ".join(RESIZE_MODES)}')

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return target_size(height, width, self.size, self.mode, self.multiple)

    def to_tensor(self, image: np.ndarray, device: torch.device | str = 'cpu') -> torch.Tensor:
        """One image -> ``[1, 3, H, W]`` float32 tensor on ``device``."""
        import torch
        import torch.nn.functional as F
        image = check_image(image)
        t = torch.from_numpy(np.ascontiguousarray(image)).to(device)
        t = t.permute(2, 0, 1).unsqueeze(0)
        t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
        h, w = self.output_size(image.shape[0], image.shape[1])
        if (h, w) != tuple(t.shape[-2:]):
            t = F.interpolate(t, size=(h, w), mode='bicubic', align_corners=False, antialias=True)
        mean = torch.tensor(IMAGENET_MEAN, device=t.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=t.device).view(1, 3, 1, 1)
        return (t - mean) / std

    def batch(self, images: Sequence[np.ndarray], device: torch.device | str = 'cpu') -> torch.Tensor:
        """Several images -> ``[N, 3, H, W]``; all must map to the same input size."""
        if len(images) == 0:
            raise ImageError('empty batch')
        import torch
        tensors = [self.to_tensor(im, device) for im in images]
        shapes = {tuple(t.shape[-2:]) for t in tensors}
        if len(shapes) > 1:
            raise ImageError(f'images map to different input sizes {sorted(shapes)} in keep_aspect mode; '
                             'batch images of one camera only')
        return torch.cat(tensors, dim=0)
