"""The transformer block shared by the byte encoder, the word backbone and the byte decoder.

Llama-style: pre-RMSNorm, rotary position embeddings, grouped-query attention (optional
QK-norm, optional sliding window), SwiGLU MLP. Sequences are packed: several documents share a
row, and ``AttentionMask`` keeps every query inside its own document.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hat.config import TransformerConfig


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (no bias, no mean subtraction)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_angles(
    positions: torch.Tensor, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles for integer positions [..., S] -> 2 x [..., S, 1, Dh/2].

    Computed once per stack and reused by every layer (the trailing 1 broadcasts over heads).
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    angles = positions.float()[..., None, None] * inv_freq  # fp32: positions reach 1e4+
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate pairs (x[..., :Dh/2], x[..., Dh/2:]) of x [..., S, H, Dh] by ``rope_angles``."""
    cos, sin = rotary
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


@dataclass
class AttentionMask:
    """Which keys each query may see: same document, not in the future, within the window.

    ``dense`` is a bool tensor [B, 1, Sq, Sk] for SDPA; ``block`` a flex-attention BlockMask.
    Exactly one is set. Build with ``AttentionMask.packed`` (training / scoring) or pass a
    dense mask directly (KV-cached generation).
    """

    dense: torch.Tensor | None = None
    block: object | None = None

    @staticmethod
    def packed(doc_ids: torch.Tensor, window: int | None, impl: str = "auto") -> AttentionMask:
        """Causal, document-isolated (and optionally sliding-window) mask for rows [B, S]."""
        if impl == "auto":
            impl = "flex" if doc_ids.is_cuda else "sdpa"
        if impl == "flex":
            return AttentionMask(block=_flex_block_mask(doc_ids, window))
        seq = doc_ids.shape[1]
        idx = torch.arange(seq, device=doc_ids.device)
        allowed = idx[None, :] <= idx[:, None]  # causal [S, S]
        if window is not None:
            allowed = allowed & (idx[:, None] - idx[None, :] < window)
        same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]  # [B, S, S]
        return AttentionMask(dense=(allowed & same_doc)[:, None])


def _flex_block_mask(doc_ids: torch.Tensor, window: int | None) -> object:
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q, k):  # noqa: ANN001 - flex attention's signature
        ok = (k <= q) & (doc_ids[b, q] == doc_ids[b, k])
        return ok & (q - k < window) if window is not None else ok

    batch, seq = doc_ids.shape
    # compiled mask construction never materialises the [B, S, S] boolean mask
    return create_block_mask(
        mask_mod, batch, None, seq, seq, device=doc_ids.device, _compile=doc_ids.is_cuda
    )


@functools.cache
def _flex_attention(compiled: bool):  # noqa: ANN202
    """flex_attention, compiled on GPU (uncompiled it materialises the scores: slow)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if compiled else flex_attention


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE, optional QK-norm and an optional KV cache."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        angles: tuple[torch.Tensor, torch.Tensor],
        mask: AttentionMask,
        cache: KVCacheLayer | None = None,
    ) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(batch, seq, self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(batch, seq, self.kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, angles), apply_rope(k, angles)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, Dh]
        if cache is not None:
            k, v = cache.update(k, v)  # [B, Hkv, S_cache, Dh]
        if mask.block is not None:
            out = _flex_attention(q.is_cuda)(q, k, v, block_mask=mask.block, enable_gqa=True)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask.dense, enable_gqa=self.kv_heads != self.n_heads
            )
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class KVCacheLayer:
    """Keys and values seen so far by one attention layer (used by generation).

    ``update`` appends and returns everything cached; ``keep_last`` trims a sliding window.
    """

    def __init__(self, keep_last: int | None = None) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.keep_last = keep_last

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k, self.v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        k_all, v_all = self.k, self.v
        if self.keep_last is not None and self.k.shape[2] > self.keep_last:
            self.k, self.v = self.k[:, :, -self.keep_last :], self.v[:, :, -self.keep_last :]
        return k_all, v_all


class SwiGLU(nn.Module):
    """Gated MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.dim, cfg.hidden_dim)

    def forward(
        self,
        x: torch.Tensor,
        angles: tuple[torch.Tensor, torch.Tensor],
        mask: AttentionMask,
        cache: KVCacheLayer | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), angles, mask, cache)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """A stack of blocks; callers give positions (for RoPE) and the attention mask."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))

    def angles(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_angles(positions, self.cfg.head_dim, self.cfg.rope_theta)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        mask: AttentionMask,
        caches: list[KVCacheLayer] | None = None,
    ) -> torch.Tensor:
        angles = self.angles(positions)  # cos, sin: [B, S, 1, Dh/2]
        for i, layer in enumerate(self.layers):
            x = layer(x, angles, mask, caches[i] if caches is not None else None)
        return x
