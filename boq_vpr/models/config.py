"""Named model configurations. A plain dict name -> ModelConfig; unknown names raise ValueError."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ..errors import ConfigError

# The backbones by name, as plain data (the modules that build them import torch; this one does not,
# so that the command line can list the names without it).
# DINOv2: name -> (embed_dim, depth, num_heads)
VITS = {
    'dinov2_vits14': (384, 12, 6),
    'dinov2_vitb14': (768, 12, 12),
    'dinov2_vitl14': (1024, 24, 16),
}
PATCH_SIZE = 14
# ResNet cropped after layer3: name -> channels of its output
RESNET_CHANNELS = {'resnet18': 256, 'resnet34': 256, 'resnet50': 1024}
# ``--weights random`` / ``model.weights: random``: seeded random weights even where weights ship.
RANDOM_WEIGHTS = 'random'


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a BoQ model and feed it.

    ``image_size`` is (height, width) of the network input; ``vit`` holds extra
    DinoVisionTransformer arguments for custom ViTs (empty for the named ones).
    """

    name: str
    backbone: str
    image_size: tuple[int, int]
    in_channels: int
    proj_channels: int
    num_queries: int
    num_layers: int
    row_dim: int
    vit: dict = field(default_factory=dict)

    @property
    def descriptor_dim(self) -> int:
        return self.proj_channels * self.row_dim

    @property
    def is_vit(self) -> bool:
        return self.backbone.startswith('dinov2')

    @property
    def stride(self) -> int:
        return PATCH_SIZE if self.is_vit else 16

    def with_image_size(self, height: int, width: int) -> 'ModelConfig':
        return replace(self, image_size=(int(height), int(width)))

    def to_dict(self) -> dict:
        d = asdict(self)
        d['image_size'] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> 'ModelConfig':
        d = dict(d)
        d['image_size'] = tuple(d['image_size'])
        return cls(**d)

    def validate(self) -> None:
        if self.backbone not in RESNET_CHANNELS and self.backbone not in VITS and not (self.is_vit and self.vit):
            raise ConfigError(f'unknown backbone {self.backbone!r}; valid: {sorted(RESNET_CHANNELS) + sorted(VITS)}')
        h, w = self.image_size
        if h <= 0 or w <= 0:
            raise ConfigError(f'image_size must be positive, got {h}x{w}')
        if self.is_vit and (h % PATCH_SIZE or w % PATCH_SIZE):
            raise ConfigError(f'DINOv2 image sides must be multiples of {PATCH_SIZE}, got {h}x{w}; '
                              f'use e.g. {round(h / PATCH_SIZE) * PATCH_SIZE}x{round(w / PATCH_SIZE) * PATCH_SIZE}')
        if self.proj_channels % max(1, self.proj_channels // 64):
            raise ConfigError(f'proj_channels {self.proj_channels} must divide into {self.proj_channels // 64} heads')


MODEL_CONFIGS: dict[str, ModelConfig] = {
    # The two official BoQ models (weights: release assets of the official repository).
    'resnet50_16384': ModelConfig('resnet50_16384', 'resnet50', (384, 384), 1024, 512, 64, 2, 32),
    'dinov2_12288': ModelConfig('dinov2_12288', 'dinov2_vitb14', (322, 322), 768, 384, 64, 2, 32),
    # Smaller configurations (no official weights): CPU-friendly, for fine-tuning or tests.
    'resnet34_8192': ModelConfig('resnet34_8192', 'resnet34', (320, 320), 256, 256, 32, 2, 32),
    'resnet18_4096': ModelConfig('resnet18_4096', 'resnet18', (224, 224), 256, 128, 32, 2, 32),
    'resnet18_1024': ModelConfig('resnet18_1024', 'resnet18', (160, 160), 256, 128, 16, 2, 8),
    'dinov2s_6144': ModelConfig('dinov2s_6144', 'dinov2_vits14', (224, 224), 384, 192, 32, 2, 32),
    'dinov2l_12288': ModelConfig('dinov2l_12288', 'dinov2_vitl14', (322, 322), 1024, 384, 64, 2, 32),
    # Our own demonstration model, trained from scratch on Nordland frames (64x32 upsampled);
    # its weights ship with the package (boq_vpr/weights, see training/configs/resnet18_nordland.yaml).
    'resnet18_nordland': ModelConfig('resnet18_nordland', 'resnet18', (64, 128), 256, 128, 32, 2, 16),
}


def get_config(name: str) -> ModelConfig:
    """Return the named configuration; a wrong name raises ValueError listing the valid ones."""
    try:
        return MODEL_CONFIGS[name]
    except KeyError:
        raise ConfigError(f'unknown model configuration {name!r}; valid: {", ".join(sorted(MODEL_CONFIGS))}') from None
