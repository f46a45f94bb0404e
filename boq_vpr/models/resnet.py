"""ResNet backbones cropped after ``layer3``, as in the official BoQ code (``backbone.net.N``)."""
from __future__ import annotations

import torch
from torch import nn
import torchvision

from .config import RESNET_CHANNELS

# name -> (torchvision factory, channels of the output)
RESNETS = {name: (getattr(torchvision.models, name), channels) for name, channels in RESNET_CHANNELS.items()}


class ResNetBackbone(nn.Module):
    """torchvision ResNet up to ``layer3`` (stride 16): ``[B, 3, H, W] -> [B, C, H/16, W/16]``.

    Built without weights (no download); weights come from a BoQ checkpoint.
    """

    def __init__(self, name: str = 'resnet50') -> None:
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f'unknown ResNet {name!r}; valid: {sorted(RESNETS)}')
        factory, self.out_channels = RESNETS[name]
        net = factory(weights=None)
        self.net = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                                 net.layer1, net.layer2, net.layer3)
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
