"""Word backbone: a Llama-style causal transformer over word embeddings."""

from __future__ import annotations

import torch
from torch import nn

from hat.block import AttentionMask, KVCacheLayer, RMSNorm, Transformer
from hat.config import TransformerConfig


class Backbone(nn.Module):
    """Predicts, at each word, a vector that guides the spelling of the next word (HAT) or the
    next token's logits (BPE twin). Shared unchanged by both models."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.transformer = Transformer(cfg)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        mask: AttentionMask,
        caches: list[KVCacheLayer] | None = None,
    ) -> torch.Tensor:
        return self.norm(self.transformer(x, positions, mask, caches))  # [B, W, D]
