"""Byte encoder: a small causal sliding-window transformer over the packed byte stream."""

from __future__ import annotations

import torch
from torch import nn

from hat.block import AttentionMask, KVCache, Transformer
from hat.config import TransformerConfig


class ByteEncoder(nn.Module):
    """Embeds bytes and contextualises each with the bytes before it (same document only).

    Returns the residual stream (no final norm): the pooler and the decoder each normalise
    what they read from it. With ``caches`` (one ``KVCache`` per layer) it encodes new bytes
    after the cached ones, written at ``cache_pos`` (one per row: a tensor [B], with
    ``cache_end`` and ``cache_first``; see ``KVCache.update``).
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, cfg.dim)
        self.transformer = Transformer(cfg)

    def forward(
        self,
        input_ids: torch.Tensor,
        byte_pos: torch.Tensor | int,
        mask: AttentionMask | None,
        caches: list[KVCache] | None = None,
        cache_pos: int | torch.Tensor = 0,
        cache_end: int | None = None,
        cache_first: int | None = None,
    ) -> torch.Tensor:
        x = self.embed(input_ids)  # [B, T] -> [B, T, De]
        return self.transformer(
            x, byte_pos, mask, caches, cache_pos, cache_end, cache_first=cache_first
        )
