"""Byte encoder: a small causal sliding-window transformer over the packed byte stream."""

from __future__ import annotations

import torch
from torch import nn

from hat.block import AttentionMask, KVCacheLayer, Transformer
from hat.config import TransformerConfig


class ByteEncoder(nn.Module):
    """Embeds bytes and contextualises each with the bytes before it (same document only).

    Returns the residual stream (no final norm): the pooler and the decoder each normalise
    what they read from it.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, cfg.dim)
        self.transformer = Transformer(cfg)

    def forward(
        self,
        input_ids: torch.Tensor,
        byte_pos: torch.Tensor,
        mask: AttentionMask,
        caches: list[KVCacheLayer] | None = None,
    ) -> torch.Tensor:
        x = self.embed(input_ids)  # [B, T] -> [B, T, De]
        return self.transformer(x, byte_pos, mask, caches)
