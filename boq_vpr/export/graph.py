"""The inference graph: a BoQ model restated with plain tensor operations for export and fast inference.

``InferenceGraph`` computes exactly what ``VPRModel`` computes in eval mode, from the same
parameters, in a form every runtime handles:

- no fused ``TransformerEncoderLayer`` / ``MultiheadAttention`` kernels: attention is
  ``MatMul -> Softmax -> MatMul`` with the projections as ``Linear``; the fused fast path and
  ``scaled_dot_product_attention`` do not export to ops the TensorRT ONNX parser takes everywhere;
- what does not depend on the image is folded into constants: each block's
  ``LayerNorm(Q + SelfAttn(Q))`` (``BoQ.cache_queries``) and its cross-attention query projection,
  pre-scaled by ``1/sqrt(head_dim)``; BatchNorm folded into the preceding convolutions;
- DINOv2 position embeddings are resolved for a fixed input size at construction; for a dynamic
  size they are interpolated in the graph with the official bicubic arithmetic (0.1 offset) written
  as two interpolation matrices, because ``F.interpolate`` with a size-dependent ``scale_factor``
  does not export;
- preprocessing (antialiased bicubic resize, normalization) stays outside the graph: antialiased
  interpolation has no ONNX equivalent.

Input ``images`` ``[N, 3, H, W]`` float32 (normalized); outputs ``descriptor`` ``[N, D]`` (L2-normalized)
and, on request, ``attention`` ``[N, blocks, queries, h*w]`` (cross-attention averaged over heads).
"""
from __future__ import annotations

import copy
import logging
import math

import torch
from torch import nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..errors import ConfigError
from ..models.dinov2 import DinoV2Backbone
from ..models.resnet import ResNetBackbone
from ..models.vpr import VPRModel

log = logging.getLogger(__name__)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, N, C]`` -> ``[B, heads, N, C // heads]``."""
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


def softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis, computed in float32 whatever the scores' dtype."""
    return torch.softmax(scores.float(), dim=-1).to(scores.dtype)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, heads, N, d]`` -> ``[B, N, heads * d]``."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class PlainSelfAttention(nn.Module):
    """``nn.MultiheadAttention(x, x, x)`` (batch first) as Linear/MatMul/Softmax; scale folded into Q."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        e, self.heads = mha.embed_dim, mha.num_heads
        scale = 1.0 / math.sqrt(e // self.heads)
        w = mha.in_proj_weight.detach().clone()
        b = mha.in_proj_bias.detach().clone()
        w[:e] *= scale
        b[:e] *= scale
        self.qkv = nn.Linear(e, 3 * e)
        self.qkv.weight.data.copy_(w)
        self.qkv.bias.data.copy_(b)
        self.out = copy.deepcopy(mha.out_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (_split_heads(t, self.heads) for t in (q, k, v))
        attn = softmax(q @ k.transpose(-2, -1))
        return self.out(_merge_heads(attn @ v))


class PlainEncoderLayer(nn.Module):
    """``nn.TransformerEncoderLayer`` (post-norm, ReLU, no dropout) without the fused fast path."""

    def __init__(self, layer: nn.TransformerEncoderLayer) -> None:
        super().__init__()
        if layer.norm_first or layer.activation_relu_or_gelu != 1:
            raise ConfigError('only post-norm ReLU TransformerEncoderLayers (as in BoQ) can be restated')
        self.attn = PlainSelfAttention(layer.self_attn)
        self.linear1 = copy.deepcopy(layer.linear1)
        self.linear2 = copy.deepcopy(layer.linear2)
        self.norm1 = copy.deepcopy(layer.norm1)
        self.norm2 = copy.deepcopy(layer.norm2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.linear2(torch.relu(self.linear1(x))))


class PlainBoQBlock(nn.Module):
    """A BoQ block with its image-independent query path folded into constants."""

    def __init__(self, block: nn.Module, query_tokens: torch.Tensor) -> None:
        super().__init__()
        self.encoder = PlainEncoderLayer(block.encoder)
        mha = block.cross_attn
        e, self.heads = mha.embed_dim, mha.num_heads
        scale = 1.0 / math.sqrt(e // self.heads)
        w, b = mha.in_proj_weight.detach(), mha.in_proj_bias.detach()
        with torch.no_grad():
            q = F.linear(query_tokens.detach(), w[:e], b[:e]) * scale          # [1, Q, E]
        self.register_buffer('q_heads', _split_heads(q, self.heads).contiguous())  # [1, H, Q, d]
        self.kv = nn.Linear(e, 2 * e)
        self.kv.weight.data.copy_(w[e:])
        self.kv.bias.data.copy_(b[e:])
        self.out = copy.deepcopy(mha.out_proj)
        self.norm_out = copy.deepcopy(block.norm_out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.encoder(x)
        k, v = self.kv(x).chunk(2, dim=-1)
        k, v = _split_heads(k, self.heads), _split_heads(v, self.heads)
        attn = softmax(self.q_heads @ k.transpose(-2, -1))   # [B, H, Q, N]
        out = self.norm_out(self.out(_merge_heads(attn @ v)))
        return x, out, attn


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """Copy a torchvision ResNet trunk with every BatchNorm folded into its convolution."""
    net = copy.deepcopy(net).eval()

    def fold(module: nn.Module) -> None:
        children = list(module.named_children())
        for (name, child), (next_name, next_child) in zip(children, children[1:]):
            if isinstance(child, nn.Conv2d) and isinstance(next_child, nn.BatchNorm2d):
                setattr(module, name, fuse_conv_bn_eval(child, next_child))
                setattr(module, next_name, nn.Identity())
        for _, child in module.named_children():
            fold(child)

    fold(net)
    return net


class ResNetTrunk(nn.Module):
    def __init__(self, backbone: ResNetBackbone) -> None:
        super().__init__()
        self.net = fold_batchnorm(backbone.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _bicubic_weights(out_size: torch.Tensor | int, in_size: int, scale: float | torch.Tensor,
                     like: torch.Tensor) -> torch.Tensor:
    """Return the ``[out_size, in_size]`` matrix of PyTorch's bicubic interpolation.

    A=-0.75, half-pixel, border clamp, for the scale factor ``scale`` when given, as
    ``F.interpolate(scale_factor=...)``.
    """
    a = -0.75
    dst = torch.arange(out_size, device=like.device).to(like.dtype)
    src = (dst + 0.5) / scale - 0.5
    base = torch.floor(src)
    t = src - base
    taps = torch.arange(-1, 3, device=like.device).to(like.dtype)       # [4]
    dist = (t.unsqueeze(1) - taps.unsqueeze(0)).abs()                    # [out, 4]
    near = ((a + 2) * dist - (a + 3)) * dist * dist + 1                  # |x| <= 1
    far = ((a * dist - 5 * a) * dist + 8 * a) * dist - 4 * a             # 1 < |x| < 2
    coeff = torch.where(dist <= 1, near, far)
    idx = (base.unsqueeze(1) + taps.unsqueeze(0)).clamp(0, in_size - 1)  # [out, 4]
    cols = torch.arange(in_size, device=like.device).to(like.dtype)      # [in]
    onehot = (idx.unsqueeze(-1) == cols).to(like.dtype)                  # [out, 4, in]
    return (coeff.unsqueeze(-1) * onehot).sum(1)


class PlainViTAttention(nn.Module):
    """The DINOv2 attention (fused qkv, ``scaled_dot_product_attention``) as MatMul/Softmax."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.heads = attn.num_heads
        self.qkv = copy.deepcopy(attn.qkv)
        self.proj = copy.deepcopy(attn.proj)
        self.scale = 1.0 / math.sqrt(attn.qkv.in_features // self.heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (_split_heads(t, self.heads) for t in (q, k, v))
        a = softmax((q * self.scale) @ k.transpose(-2, -1))
        return self.proj(_merge_heads(a @ v))


class DinoTrunk(nn.Module):
    """DINOv2 as BoQ uses it, with position embeddings resolved for ``image_size``.

    If ``image_size`` is None, they are interpolated in the graph for the input's size.
    """

    def __init__(self, backbone: DinoV2Backbone, image_size: tuple[int, int] | None) -> None:
        super().__init__()
        dino = backbone.dino
        self.patch = dino.patch_size
        self.channels = backbone.out_channels
        self.offset = dino.interpolate_offset
        self.patch_embed = copy.deepcopy(dino.patch_embed)
        self.blocks = copy.deepcopy(dino.blocks)
        for blk in self.blocks:  # scaled_dot_product_attention -> MatMul/Softmax, same weights
            blk.attn = PlainViTAttention(blk.attn)
        self.register_buffer('cls_token', dino.cls_token.detach().clone())
        self.fixed = image_size is not None
        with torch.no_grad():
            if self.fixed:
                h, w = image_size
                pos = dino.interpolate_pos_encoding((h // self.patch) * (w // self.patch), h, w)
                self.register_buffer('pos_cls', (pos[:, :1] + dino.cls_token).detach().clone())
                self.register_buffer('pos_patch', pos[:, 1:].detach().clone())
            else:
                pos = dino.pos_embed.detach().float()
                m = int(math.sqrt(pos.shape[1] - 1))
                self.grid = m
                self.register_buffer('pos_cls', (pos[:, :1] + dino.cls_token).detach().clone())
                self.register_buffer('pos_grid', pos[0, 1:].reshape(m, m, -1).permute(2, 0, 1).contiguous())

    def _patch_positions(self, h0: int, w0: int, like: torch.Tensor) -> torch.Tensor:
        m = self.grid
        grid = self.pos_grid.float()
        wh = _bicubic_weights(h0, m, (h0 + self.offset) / m, grid)   # [h0, m]
        ww = _bicubic_weights(w0, m, (w0 + self.offset) / m, grid)   # [w0, m]
        grid = wh @ grid @ ww.transpose(0, 1)                         # [C, h0, w0]
        return grid.flatten(1).transpose(0, 1).unsqueeze(0).to(like.dtype)  # [1, h0*w0, C]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        h0, w0 = h // self.patch, w // self.patch
        tokens = self.patch_embed(x)
        pos = self.pos_patch if self.fixed else self._patch_positions(h0, w0, tokens)
        x = torch.cat((self.pos_cls.expand(b, -1, -1), tokens + pos), dim=1)
        for blk in self.blocks:
            x = blk(x)
        return x[:, 1:].reshape(b, h0, w0, self.channels).permute(0, 3, 1, 2)


class InferenceGraph(nn.Module):
    """``VPRModel`` in eval mode as plain ops: ``images -> descriptor`` (``, attention``).

    ``image_size`` fixes the input size the graph is made for (DINOv2 position embeddings are
    resolved for it); ``None`` makes a size-agnostic graph.
    """

    def __init__(self, model: VPRModel, image_size: tuple[int, int] | None = None,
                 return_attention: bool = False) -> None:
        super().__init__()
        model = model.eval()
        self.config = model.config
        self.image_size = tuple(image_size) if image_size is not None else None
        self.return_attention = return_attention
        if isinstance(model.backbone, ResNetBackbone):
            self.backbone: nn.Module = ResNetTrunk(model.backbone)
        elif isinstance(model.backbone, DinoV2Backbone):
            self.backbone = DinoTrunk(model.backbone, self.image_size)
        else:
            raise ConfigError(f'no inference graph for backbone {type(model.backbone).__name__}')
        agg = model.aggregator
        with torch.no_grad():
            tokens = [blk.query_tokens() for blk in agg.boqs]
        self.proj_c = copy.deepcopy(agg.proj_c)
        self.norm_input = copy.deepcopy(agg.norm_input)
        self.blocks = nn.ModuleList([PlainBoQBlock(blk, q) for blk, q in zip(agg.boqs, tokens)])
        self.fc = copy.deepcopy(agg.fc)
        self.descriptor_dim = agg.descriptor_dim
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, images: torch.Tensor, return_attention: bool | None = None):
        """Compute the descriptors of a batch, and on request the cross-attention maps.

        ``return_attention`` (None: as constructed) also returns the cross-attention maps
        ``[N, blocks, queries, h*w]`` from the same pass (same weights, precision and layout).
        """
        want = self.return_attention if return_attention is None else bool(return_attention)
        x = self.proj_c(self.backbone(images.to(self.proj_c.weight.dtype)))
        x = self.norm_input(x.flatten(2).transpose(1, 2))
        outs, attns = [], []
        for blk in self.blocks:
            x, out, attn = blk(x)
            outs.append(out)
            if want:
                attns.append(attn.mean(dim=1))
        out = self.fc(torch.cat(outs, dim=1).transpose(1, 2)).flatten(1).float()
        desc = out / out.norm(p=2, dim=-1, keepdim=True).clamp_min(1e-12)
        if want:
            return desc, torch.stack(attns, dim=1).float()
        return desc


class Float32LayerNorm(nn.Module):
    """A LayerNorm computed in float32 inside a reduced-precision graph (FP16 overflows over 512 channels)."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.norm = copy.deepcopy(norm).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.float()).to(x.dtype)


def to_mixed_precision(graph: InferenceGraph, dtype: torch.dtype = torch.float16) -> InferenceGraph:
    """Copy ``graph`` with weights and activations in ``dtype``.

    LayerNorm, softmax and the final normalization stay in float32; input and outputs stay float32.
    """
    graph = copy.deepcopy(graph)

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.LayerNorm):
                setattr(module, name, Float32LayerNorm(child))
            else:
                swap(child)

    graph = graph.to(dtype)
    swap(graph)
    return graph
