"""The full place-recognition model: backbone + BoQ aggregator (``backbone.*``, ``aggregator.*``)."""
from __future__ import annotations

import torch
from torch import nn

from .boq import BoQ
from .config import ModelConfig, get_config
from .dinov2 import DinoV2Backbone
from .resnet import ResNetBackbone


class VPRModel(nn.Module):
    """BoQ place recognition model: ``[B, 3, H, W]`` normalized images -> L2-normalized descriptors ``[B, D]``.

    And the cross-attention maps ``[B, Q, h*w]`` of each block on request.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        if config.is_vit:
            self.backbone = DinoV2Backbone(config.backbone, **config.vit)
        else:
            self.backbone = ResNetBackbone(config.backbone)
        self.aggregator = BoQ(config.in_channels, config.proj_channels, config.num_queries,
                              config.num_layers, config.row_dim)

    @property
    def descriptor_dim(self) -> int:
        return self.aggregator.descriptor_dim

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        feats = self.backbone(x)
        desc, attns = self.aggregator(feats, return_attention=return_attention)
        if return_attention:
            return desc, attns
        return desc

    def feature_shape(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the local feature map (the attention maps' grid) for an input size."""
        return feature_shape(self.config, height, width)


def feature_shape(config: ModelConfig, height: int, width: int) -> tuple[int, int]:
    """Spatial size of the local feature map (the attention maps' grid) of ``config`` for an input size."""
    s = config.stride
    if config.is_vit:
        return height // s, width // s
    # conv1 (stride 2, pad 3, k 7) -> maxpool (stride 2, pad 1, k 3) -> layer2, layer3 (stride 2 each)
    def down(n: int, k: int, s_: int, p: int) -> int:
        return (n + 2 * p - k) // s_ + 1
    h, w = down(height, 7, 2, 3), down(width, 7, 2, 3)
    h, w = down(h, 3, 2, 1), down(w, 3, 2, 1)
    for _ in range(2):
        h, w = down(h, 3, 2, 1), down(w, 3, 2, 1)
    return h, w


RANDOM_SEED = 0


def build_model(config: ModelConfig | str, seed: int | None = None) -> VPRModel:
    """Build a model with random weights (load real ones with ``load_weights``).

    With ``seed`` the random weights are reproducible across processes (same seed, same model).
    """
    if isinstance(config, str):
        config = get_config(config)
    if seed is None:
        return VPRModel(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VPRModel(config)
