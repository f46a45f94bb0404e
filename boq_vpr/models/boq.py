"""The Bag-of-Queries aggregator, with the module names and arithmetic of the official code.

State-dict keys (``proj_c``, ``norm_input``, ``boqs.N.{encoder,queries,self_attn,norm_q,
cross_attn,norm_out}``, ``fc``) equal the official ones so official checkpoints load strictly.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class BoQBlock(nn.Module):
    """One block: a transformer encoder over the local features, then learned queries that cross-attend to them."""

    def __init__(self, in_dim: int, num_queries: int, nheads: int = 8) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(
            d_model=in_dim, nhead=nheads, dim_feedforward=4 * in_dim, batch_first=True, dropout=0.0)
        self.queries = nn.Parameter(torch.randn(1, num_queries, in_dim))
        self.self_attn = nn.MultiheadAttention(in_dim, num_heads=nheads, batch_first=True)
        self.norm_q = nn.LayerNorm(in_dim)
        self.cross_attn = nn.MultiheadAttention(in_dim, num_heads=nheads, batch_first=True)
        self.norm_out = nn.LayerNorm(in_dim)

    def query_tokens(self) -> torch.Tensor:
        """Return ``LayerNorm(Q + SelfAttn(Q))``: the queries after their self-attention.

        Shape ``[1, num_queries, in_dim]``. It does not depend on the image.
        """
        q = self.queries
        q = q + self.self_attn(q, q, q, need_weights=False)[0]
        return self.norm_q(q)

    def forward(self, x: torch.Tensor, q: torch.Tensor | None = None, need_weights: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Return (encoded features, query outputs, head-averaged cross-attention or None).

        ``q`` may carry precomputed ``query_tokens()`` (inference); by default they are computed.
        """
        batch = x.size(0)
        x = self.encoder(x)
        if q is None:
            q = self.query_tokens()
        q = q.expand(batch, -1, -1)
        out, attn = self.cross_attn(q, x, x, need_weights=need_weights)
        out = self.norm_out(out)
        return x, out, (attn.detach() if attn is not None else None)


class BoQ(nn.Module):
    """Bag-of-Queries aggregator.

    Local feature map ``[B, C, H, W]`` -> descriptor ``[B, proj_channels * row_dim]`` (L2-normalized).
    """

    def __init__(self, in_channels: int = 1024, proj_channels: int = 512, num_queries: int = 32,
                 num_layers: int = 2, row_dim: int = 32) -> None:
        super().__init__()
        self.proj_c = nn.Conv2d(in_channels, proj_channels, kernel_size=3, padding=1)
        self.norm_input = nn.LayerNorm(proj_channels)
        self.boqs = nn.ModuleList([
            BoQBlock(proj_channels, num_queries, nheads=max(1, proj_channels // 64))
            for _ in range(num_layers)])
        self.fc = nn.Linear(num_layers * num_queries, row_dim)
        self._cached_queries: list[torch.Tensor] | None = None

    @property
    def descriptor_dim(self) -> int:
        return self.proj_c.out_channels * self.fc.out_features

    def cache_queries(self, enable: bool = True) -> None:
        """Precompute each block's ``LayerNorm(Q + SelfAttn(Q))`` (constant at inference).

        Call after loading weights and again if they change; ``train()`` drops the cache.
        """
        if not enable:
            self._cached_queries = None
            return
        with torch.no_grad():
            self._cached_queries = [blk.query_tokens().detach() for blk in self.boqs]

    def train(self, mode: bool = True) -> 'BoQ':
        if mode:
            self._cached_queries = None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):  # keep the cache on the module's device and dtype
        result = super()._apply(fn, *args, **kwargs)
        if self._cached_queries is not None:
            self._cached_queries = [fn(q) for q in self._cached_queries]
        return result

    def forward(self, x: torch.Tensor, return_attention: bool = False
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.proj_c(x)
        x = x.flatten(2).permute(0, 2, 1)
        x = self.norm_input(x)
        outs: list[torch.Tensor] = []
        attns: list[torch.Tensor] = []
        cached = self._cached_queries if not self.training else None
        for i, blk in enumerate(self.boqs):
            q = cached[i] if cached is not None else None
            x, out, attn = blk(x, q=q, need_weights=return_attention)
            outs.append(out)
            if attn is not None:
                attns.append(attn)
        out = torch.cat(outs, dim=1)
        out = self.fc(out.permute(0, 2, 1))
        out = out.flatten(1)
        out = F.normalize(out, p=2, dim=-1)
        return out, attns
