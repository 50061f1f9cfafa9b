"""Word pooling: one learned query per head cross-attends to its word's encoder outputs."""

from __future__ import annotations

import torch
from torch import nn

import hat_kernels
from hat.block import RMSNorm, apply_rope, rope_angles
from hat.config import TransformerConfig


def ragged_attention_pool(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor, impl: str = "auto"
) -> torch.Tensor:
    """Attention of one query per word over that word's bytes only.

    q [W, H, Dh], k and v [T, H, Dh], offsets [W+1] int64 word starts on the byte axis.
    Returns [W, H, Dh]: softmax(q k / sqrt(Dh)) over each word's bytes applied to v; an empty
    word gives zeros. ``impl``: "auto" (Triton on CUDA, PyTorch reference on CPU),
    "reference" or "triton". The reference in ``hat_kernels.reference`` defines the meaning.
    """
    return hat_kernels.ragged_attention_pool(q, k, v, offsets, impl=impl)


class WordPooler(nn.Module):
    """Turns each word's encoder outputs into one backbone-width word embedding.

    The query is a learned vector per head, rotated (RoPE) to the position of the word's last
    byte; keys are rotated to their byte positions. So the score depends on a byte's distance
    from the end of its word, the same way for every word of a document.
    """

    def __init__(
        self, enc: TransformerConfig, out_dim: int, qk_norm: bool = True, impl: str = "auto"
    ) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.theta = enc.n_heads, enc.head_dim, enc.rope_theta
        self.impl = impl
        self.norm = RMSNorm(enc.dim, enc.norm_eps)
        self.query = nn.Parameter(torch.randn(enc.n_heads, enc.head_dim) * 0.02)
        self.k_proj = nn.Linear(enc.dim, enc.n_heads * enc.head_dim, bias=False)
        self.v_proj = nn.Linear(enc.dim, enc.n_heads * enc.head_dim, bias=False)
        self.q_norm = RMSNorm(enc.head_dim, enc.norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(enc.head_dim, enc.norm_eps) if qk_norm else None
        self.out_proj = nn.Linear(enc.n_heads * enc.head_dim, out_dim, bias=False)

    def forward(
        self,
        byte_states: torch.Tensor,
        byte_pos: torch.Tensor,
        offsets: torch.Tensor,
        word_end_pos: torch.Tensor,
    ) -> torch.Tensor:
        """byte_states [N, De] (flat), byte_pos [N], offsets [W+1], word_end_pos [W] -> [W, D]."""
        h = self.norm(byte_states)
        k = self.k_proj(h).view(-1, self.n_heads, self.head_dim)  # [N, H, Dh]
        v = self.v_proj(h).view(-1, self.n_heads, self.head_dim)
        q = self.query.expand(word_end_pos.shape[0], -1, -1)  # [W, H, Dh]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q, rope_angles(word_end_pos, self.head_dim, self.theta))
        k = apply_rope(k, rope_angles(byte_pos, self.head_dim, self.theta))
        # under autocast k and v come out of the projections in bf16 while the learned query
        # stays fp32: the kernel takes one dtype, the one the projections compute in
        q, k = q.to(v.dtype), k.to(v.dtype)
        pooled = ragged_attention_pool(
            q.contiguous(), k.contiguous(), v.contiguous(), offsets, self.impl
        )
        return self.out_proj(pooled.flatten(1))  # [W, H*Dh] -> [W, D]
