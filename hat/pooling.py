"""Word pooling: one learned query per head cross-attends to its word's encoder outputs."""

from __future__ import annotations

import torch
from torch import nn

import hat_kernels
from hat.block import RMSNorm, RotaryEmbedding, fuse_on_load, rotate
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
    from the end of its word, the same way for every word of a document. ``kv`` is one
    projection whose output rows are k | v.
    """

    def __init__(
        self, enc: TransformerConfig, out_dim: int, qk_norm: bool = True, impl: str = "auto"
    ) -> None:
        super().__init__()
        self.n_heads, self.head_dim = enc.n_heads, enc.head_dim
        self.impl = impl
        self.norm = RMSNorm(enc.dim, enc.norm_eps)
        self.query = nn.Parameter(torch.randn(enc.n_heads, enc.head_dim) * 0.02)
        self.kv = nn.Linear(enc.dim, 2 * enc.n_heads * enc.head_dim, bias=False)
        self.q_norm = RMSNorm(enc.head_dim, enc.norm_eps) if qk_norm else None
        self.k_norm = RMSNorm(enc.head_dim, enc.norm_eps) if qk_norm else None
        self.out_proj = nn.Linear(enc.n_heads * enc.head_dim, out_dim, bias=False)
        self.rope = RotaryEmbedding(enc.head_dim, enc.rope_theta)
        self.register_load_state_dict_pre_hook(fuse_on_load(("k_proj", "v_proj"), "kv"))

    def forward(
        self,
        byte_states: torch.Tensor,
        byte_pos: torch.Tensor | int,
        offsets: torch.Tensor,
        word_end_pos: torch.Tensor | int,
        max_pos: int | None = None,
    ) -> torch.Tensor:
        """byte_states [N, De] (flat), byte_pos [N], offsets [W+1], word_end_pos [W] -> [W, D].

        An int ``byte_pos`` is the position of the first of N consecutive bytes of one
        document, an int ``word_end_pos`` that of a single word's last byte. Tensor positions
        are below ``max_pos`` (default N; the row length, when N bytes are several rows).
        """
        heads, count = self.n_heads, byte_states.shape[0]
        bound = count if max_pos is None else max_pos
        kv = self.kv(self.norm(byte_states)).view(count, 2 * heads, self.head_dim)
        k, v = kv.split(heads, dim=1)  # [N, H, Dh] each (split: a cheaper backward than slices)
        q = self.query  # [H, Dh]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if not isinstance(byte_pos, int):
            self.rope.reserve(bound)  # (does nothing in compiled code)
        q_angles = self.rope(word_end_pos, 1 if isinstance(word_end_pos, int) else bound)
        q = rotate(q.expand(offsets.shape[0] - 1, -1, -1), *q_angles)  # [W, H, Dh]
        k = rotate(k, *self.rope(byte_pos, count if isinstance(byte_pos, int) else bound))
        # under autocast k and v come out of the projection in bf16 while the learned query
        # stays fp32: the kernel takes one dtype, the one the projections compute in
        q, k = q.to(v.dtype), k.to(v.dtype)
        pooled = ragged_attention_pool(
            q.contiguous(), k.contiguous(), v.contiguous(), offsets, self.impl
        )
        return self.out_proj(pooled.flatten(1))  # [W, H*Dh] -> [W, D]
