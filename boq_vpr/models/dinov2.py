"""DINOv2 ViT/14 backbone, built offline.

The official DINOv2 model code (facebookresearch/dinov2 ``DinoVisionTransformer``) is published
for ``torch.hub`` only, which downloads at run time; this module re-states the parts BoQ uses
(patch embedding, position-embedding interpolation with its 0.1 offset, pre-norm blocks with
LayerScale) with the same parameter names, so official checkpoints load strictly and the
reference fixtures are reproduced. No register tokens, no SwiGLU (ViT-S/B/L only).
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from ..errors import ImageError
from .config import PATCH_SIZE, VITS



class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, init_values: float = 1e-5) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
    """The DINOv2 ViT with the parameter names of the official code."""

    def __init__(self, embed_dim: int = 768, depth: int = 12, num_heads: int = 12, img_size: int = 518,
                 patch_size: int = PATCH_SIZE, mlp_ratio: float = 4.0, init_values: float = 1.0,
                 interpolate_offset: float = 0.1) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.interpolate_offset = interpolate_offset
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # unused at inference; kept for keys
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, init_values) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)  # in checkpoints; BoQ does not apply it
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)

    def interpolate_pos_encoding(self, npatch: int, h: int, w: int) -> torch.Tensor:
        """Position embeddings for an ``h x w`` pixel input (official arithmetic, offset included)."""
        pos_embed = self.pos_embed
        n = pos_embed.shape[1] - 1
        if npatch == n and h == w:
            return pos_embed
        pos_embed = pos_embed.float()
        class_pos = pos_embed[:, 0]
        patch_pos = pos_embed[:, 1:]
        dim = pos_embed.shape[-1]
        h0, w0 = h // self.patch_size, w // self.patch_size
        m = int(math.sqrt(n))
        scale = (float(h0 + self.interpolate_offset) / m, float(w0 + self.interpolate_offset) / m)
        patch_pos = F.interpolate(patch_pos.reshape(1, m, m, dim).permute(0, 3, 1, 2),
                                  scale_factor=scale, mode='bicubic', antialias=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((class_pos.unsqueeze(0), patch_pos), dim=1).to(self.pos_embed.dtype)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return x + self.interpolate_pos_encoding(x.shape[1] - 1, h, w)


class DinoV2Backbone(nn.Module):
    """DINOv2 as BoQ uses it: all blocks, CLS token dropped, no final norm.

    ``[B, 3, H, W] -> [B, C, H/14, W/14]``. H and W must be multiples of 14.
    """

    def __init__(self, name: str = 'dinov2_vitb14', **vit_kwargs) -> None:
        super().__init__()
        if name in VITS:
            embed_dim, depth, heads = VITS[name]
            vit_kwargs = {'embed_dim': embed_dim, 'depth': depth, 'num_heads': heads, **vit_kwargs}
        elif not vit_kwargs:
            raise ValueError(f'unknown DINOv2 model {name!r}; valid: {sorted(VITS)}')
        self.dino = DinoVisionTransformer(**vit_kwargs)
        self.out_channels = self.dino.embed_dim
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        p = self.dino.patch_size
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling() and (h % p or w % p):
            raise ImageError(f'DINOv2 input sides must be multiples of {p}, got {h}x{w}; '
                             f'use e.g. {round(h / p) * p}x{round(w / p) * p}')
        x = self.dino.prepare_tokens(x)
        for blk in self.dino.blocks:
            x = blk(x)
        x = x[:, 1:]
        return x.reshape(b, h // p, w // p, self.out_channels).permute(0, 3, 1, 2)
