"""Backbone handling for training.

ImageNet weights, freezing all but the last blocks, gradient checkpointing. None of it changes the
model's state_dict keys.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from boq_vpr.errors import CheckpointError, ConfigError
from boq_vpr.models.checkpoint import check_state_dict, read_state_dict
from boq_vpr.models.vpr import VPRModel

log = logging.getLogger(__name__)

# torchvision ResNet names -> our cropped backbone (Sequential(conv1, bn1, relu, maxpool, layer1..3))
_RESNET_RENAME = {'conv1.': 'net.0.', 'bn1.': 'net.1.', 'layer1.': 'net.4.', 'layer2.': 'net.5.', 'layer3.': 'net.6.'}
_RESNET_DROPPED = ('layer4.', 'fc.')
# residual stages of the cropped ResNet, first to last: the stem, layer1, layer2, layer3
_RESNET_STAGES = ((0, 1, 2, 3), (4,), (5,), (6,))


def trainable_units(model: VPRModel) -> list[nn.Module]:
    """Return the backbone's trainable units in order.

    ResNet stages (stem, layer1, layer2, layer3) or the DINOv2 transformer blocks.
    """
    bb = model.backbone
    if model.config.is_vit:
        return list(bb.dino.blocks)
    return [nn.ModuleList([bb.net[i] for i in idx]) for idx in _RESNET_STAGES]


def convert_backbone_state(state: dict[str, torch.Tensor], is_vit: bool) -> dict[str, torch.Tensor]:
    """Map ImageNet weights to the keys of ``model.backbone``.

    The weights: torchvision ResNet, DINOv2 release file, or our own ``backbone.*`` keys.
    """
    if any(k.startswith('backbone.') for k in state):
        return {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    if is_vit:
        if any(k.startswith('dino.') for k in state):
            return dict(state)
        return {'dino.' + k: v for k, v in state.items()}
    if any(k.startswith('net.') for k in state):
        return dict(state)
    out = {}
    for k, v in state.items():
        if k.startswith(_RESNET_DROPPED):
            continue
        for old, new in _RESNET_RENAME.items():
            if k.startswith(old):
                out[new + k[len(old):]] = v
                break
        else:
            out[k] = v   # left as is: reported as unexpected
    return out


def load_backbone_weights(model: VPRModel, path: str | Path) -> None:
    """Load ImageNet backbone weights strictly into ``model.backbone`` (the aggregator keeps its init)."""
    state = convert_backbone_state(read_state_dict(path), model.config.is_vit)
    try:
        check_state_dict(model.backbone, state, source=f'{path} (backbone weights)')
    except CheckpointError as err:
        raise CheckpointError(f'{err}; expected torchvision {model.config.backbone} or DINOv2 '
                              f'{model.config.backbone} ImageNet weights') from None
    model.backbone.load_state_dict(state, strict=True)
    log.info('backbone weights of %s loaded from %s', model.config.backbone, path)


def freeze_backbone(model: VPRModel, trainable_blocks: int | None) -> list[nn.Module]:
    """Freeze the backbone except its last ``trainable_blocks`` units (None: train all).

    Parameters the BoQ forward never uses (DINOv2's final norm and mask token) are always frozen.
    Returns the frozen modules (their batch norms must stay in eval mode).
    """
    units = trainable_units(model)
    if model.config.is_vit:
        dino = model.backbone.dino
        dino.norm.requires_grad_(False)
        dino.mask_token.requires_grad_(False)
    if trainable_blocks is None:
        return []
    if trainable_blocks > len(units):
        raise ConfigError(f'trainable_blocks {trainable_blocks} exceeds the {len(units)} '
                          f'{"blocks" if model.config.is_vit else "stages"} of {model.config.backbone}')
    n_frozen = len(units) - trainable_blocks
    frozen: list[nn.Module] = list(units[:n_frozen])
    if model.config.is_vit:
        dino = model.backbone.dino
        frozen.append(dino.patch_embed)
        for p in (dino.cls_token, dino.pos_embed):
            p.requires_grad_(False)
    for m in frozen:
        m.requires_grad_(False)
    return frozen


def set_frozen_eval(frozen: list[nn.Module]) -> None:
    """Batch norms of frozen modules keep their running statistics (eval mode)."""
    for m in frozen:
        for sub in m.modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                sub.eval()


def enable_gradient_checkpointing(model: VPRModel) -> int:
    """Recompute the activations of trainable backbone units in the backward pass, not storing them.

    Returns the number of wrapped modules.
    """
    modules: list[nn.Module] = []
    if model.config.is_vit:
        modules = [b for b in model.backbone.dino.blocks if any(p.requires_grad for p in b.parameters())]
    else:
        for stage in trainable_units(model):
            for m in stage:
                if any(p.requires_grad for p in m.parameters()) and isinstance(m, nn.Sequential):
                    modules.extend(m)   # residual blocks of a layer
    for m in modules:
        m.forward = functools.partial(_checkpointed, m.forward)
    log.info('gradient checkpointing on %d backbone blocks', len(modules))
    return len(modules)


def _checkpointed(forward, x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled():
        return checkpoint(forward, x, use_reentrant=False)
    return forward(x)


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, total
