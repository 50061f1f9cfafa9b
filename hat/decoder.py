"""Byte decoder: a small causal sliding-window transformer that spells words out byte by byte."""

from __future__ import annotations

import torch
from torch import nn

from hat.block import AttentionMask, KVCacheLayer, RMSNorm, Transformer
from hat.config import TransformerConfig


class ByteDecoder(nn.Module):
    """Runs on the encoder's byte activations plus, at every byte of word i, the backbone's
    output for word i-1 (normalised and projected): no byte ever sees the backbone's view of
    its own word. ``guide="every"`` adds a separately projected guide before every layer.
    """

    def __init__(self, cfg: TransformerConfig, backbone_dim: int, guide: str = "first") -> None:
        super().__init__()
        n_guides = cfg.n_layers if guide == "every" else 1
        self.guide_norm = RMSNorm(backbone_dim, cfg.norm_eps)
        self.guide_proj = nn.ModuleList(
            nn.Linear(backbone_dim, cfg.dim, bias=False) for _ in range(n_guides)
        )
        # stands in for "word -1": the guide of every document's first word
        self.first_guide = nn.Parameter(torch.randn(backbone_dim) * 0.02)
        self.transformer = Transformer(cfg)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, 256, bias=False)

    def guides(self, word_states: torch.Tensor) -> torch.Tensor:
        """[B, W, D] backbone outputs -> [B, W+1, D]: slot 0 the learned first guide, slot
        i+1 the output of word i (normalised)."""
        first = self.first_guide.to(word_states.dtype).expand(word_states.shape[0], 1, -1)
        return self.guide_norm(torch.cat([first, word_states], dim=1))

    def forward(
        self,
        byte_states: torch.Tensor,
        guides: torch.Tensor,
        guide_index: torch.Tensor,
        byte_pos: torch.Tensor,
        mask: AttentionMask,
        caches: list[KVCacheLayer] | None = None,
    ) -> torch.Tensor:
        """byte_states [B, T, De], guides [B, W+1, D], guide_index [B, T] -> hidden [B, T, De]."""
        index = guide_index[..., None]
        angles = self.transformer.angles(byte_pos)
        x = byte_states
        for i, layer in enumerate(self.transformer.layers):
            if i < len(self.guide_proj):
                # project per word first (W rows), then broadcast to the bytes (T rows)
                per_word = self.guide_proj[i](guides)  # [B, W+1, De]
                x = x + torch.gather(per_word, 1, index.expand(-1, -1, per_word.shape[-1]))
            x = layer(x, angles, mask, caches[i] if caches is not None else None)
        return self.norm(x)
