"""Word backbone: a Llama-style causal transformer over word embeddings."""

from __future__ import annotations

import torch
from torch import nn

from hat.block import AttentionMask, KVCache, RMSNorm, Transformer
from hat.config import TransformerConfig


class Backbone(nn.Module):
    """Predicts, at each word, a vector that guides the spelling of the next word (HAT) or the
    next token's logits (BPE twin). Shared unchanged by both models.

    With ``caches`` it runs new positions after the cached ones: ``cache_pos`` is where they
    are written, an int for every row or a tensor [B] of one position per row (then
    ``cache_end`` bounds the positions any row reads; ``cache_rows`` which of the caches'
    rows x holds, when not all), see ``KVCache.update``.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.transformer = Transformer(cfg)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | int,
        mask: AttentionMask | None,
        caches: list[KVCache] | None = None,
        cache_pos: int | torch.Tensor = 0,
        cache_end: int | None = None,
        cache_rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # the residual stream in the parameters' dtype, whatever made x: under bf16 autocast
        # the twin's embedding gives fp32 but HAT's pooler (a Linear) gives bf16, which would
        # run HAT's whole backbone in bf16 residuals; a model cast to bf16 stays bf16
        x = x.to(self.norm.weight.dtype)
        h = self.transformer(x, positions, mask, caches, cache_pos, cache_end, cache_rows)
        return self.norm(h)  # [B, W, D]
