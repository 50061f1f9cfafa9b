"""Byte decoder: a small causal sliding-window transformer that spells words out byte by byte."""

from __future__ import annotations

import torch
from torch import nn

from hat.block import AttentionMask, KVCache, RMSNorm, Transformer
from hat.config import TransformerConfig


class ByteDecoder(nn.Module):
    """Runs on the encoder's byte activations plus, at every byte of word i, the backbone's
    output for word i-1 (normalised and projected): no byte ever sees the backbone's view of
    its own word. ``guide="every"`` adds a separately projected guide before every layer.
    With ``caches`` it decodes new bytes after the cached ones, written at ``cache_pos`` (one
    per row: a tensor [B], with ``cache_end`` and ``cache_first``; see ``KVCache.update``).
    """

    def __init__(self, cfg: TransformerConfig, backbone_dim: int, guide: str = "first") -> None:
        super().__init__()
        self.n_guides = cfg.n_layers if guide == "every" else 1
        self.guide_norm = RMSNorm(backbone_dim, cfg.norm_eps)
        self.guide_proj = nn.ModuleList(
            nn.Linear(backbone_dim, cfg.dim, bias=False) for _ in range(self.n_guides)
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
        guide_index: torch.Tensor | None,
        byte_pos: torch.Tensor | int,
        mask: AttentionMask | None,
        caches: list[KVCache] | None = None,
        cache_pos: int | torch.Tensor = 0,
        cache_end: int | None = None,
        cache_first: int | None = None,
    ) -> torch.Tensor:
        """byte_states [B, T, De], guides [B, G, D] (normalised, as ``guides`` gives them),
        guide_index [B, T]: the guide of each byte (None: guides are per byte, G == T)
        -> hidden [B, T, De] (normalised)."""
        batch, seq, dim = byte_states.shape
        ctx = self.transformer.context(
            batch, seq, byte_pos, mask, cache_pos, cache_end, cache_first=cache_first
        )
        x = byte_states.reshape(batch * seq, dim)
        for i, layer in enumerate(self.transformer.layers):
            if i < self.n_guides:
                x = x + self._guide(self.guide_proj[i], guides, guide_index)
            x = layer(x, ctx, caches[i] if caches is not None else None)
        return self.norm(x).view(batch, seq, dim)

    @staticmethod
    def _guide(proj: nn.Linear, guides: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """Projected guide of every byte -> [B * T, De]."""
        if index is None:
            return proj(guides.flatten(0, 1))
        if guides.shape[1] <= index.shape[1]:
            # fewer guides than bytes (training): project per word, then broadcast to bytes
            per_word = proj(guides)  # [B, G, De]
            index = index[..., None].expand(-1, -1, per_word.shape[-1])
            return torch.gather(per_word, 1, index).flatten(0, 1)
        # fewer bytes than guides (decoding from a table of guides): pick, then project
        picked = torch.gather(guides, 1, index[..., None].expand(-1, -1, guides.shape[-1]))
        return proj(picked.flatten(0, 1))
