"""The cached single-step machinery: KV caches (``ColumnCache``, ``RowCache``), ``window_mask``,
left-padded columns (``LeftPadding``) and the single-step versions of a transformer layer and
the word pooler (``StepLayer`` / ``step_layers``, ``StepPooler``, with ``RopeTable`` and
``rotate``). Used by both HAT's and the BPE twin's cached engines, so that the two are
engineered alike."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hat.block import AttentionMask, Block, RMSNorm, Transformer, rope_angles
from hat.pooling import WordPooler, ragged_attention_pool


# ==== caches ==========================================================================
class ColumnCache:
    """Preallocated KV cache of one attention layer over columns shared by all rows.

    Works as ``KVCacheLayer`` for ``Attention``: ``update(k, v)`` writes the new keys at slot
    ``write`` (overwriting, so positions can be recomputed) and returns slots
    [``read_from``, end of the write). The owner sets both before each forward.
    """

    def __init__(self, batch: int, heads: int, cap: int, head_dim: int, like: torch.Tensor):
        self.k = like.new_zeros(batch, heads, cap, head_dim)  # [B, Hkv, cap, Dh]
        self.v = like.new_zeros(batch, heads, cap, head_dim)
        self.write = self.read_from = 0

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.write + k.shape[2]
        self.k[:, :, self.write : end] = k
        self.v[:, :, self.write : end] = v
        return self.k[:, :, self.read_from : end], self.v[:, :, self.read_from : end]

    def shift(self, n: int) -> None:
        """Drop the first ``n`` slots (sliding window); later slots move down."""
        for t in (self.k, self.v):
            t[:, :, : t.shape[2] - n] = t[:, :, n:].clone()


class RowCache:
    """Backbone KV cache with a length per row (rows finish words at different steps).

    ``slots=None``: ``update`` writes a block at slot 0 (prefill). Otherwise one entry per row at
    ``slots`` [B] (a masked write: a row without a new word writes scratch just past its length,
    never read, overwritten by its next word), or at one int slot for all rows (a slice write);
    returns slots [0, ``read_to``).
    """

    def __init__(self, batch: int, heads: int, cap: int, head_dim: int, like: torch.Tensor):
        self.k = like.new_zeros(batch, heads, cap, head_dim)  # [B, Hkv, cap, Dh]
        self.v = like.new_zeros(batch, heads, cap, head_dim)
        self.rows = torch.arange(batch, device=like.device)
        self.slots: torch.Tensor | int | None = None
        self.read_to = 0

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.slots is None:
            end = k.shape[2]
            self.k[:, :, :end], self.v[:, :, :end] = k, v
        elif isinstance(self.slots, int):
            end, s = self.read_to, self.slots
            self.k[:, :, s : s + 1], self.v[:, :, s : s + 1] = k, v
        else:
            end = self.read_to
            self.k[self.rows, :, self.slots] = k[:, :, 0]
            self.v[self.rows, :, self.slots] = v[:, :, 0]
        return self.k[:, :, :end], self.v[:, :, :end]

    def reserve(self, cap: int) -> None:
        """Grow (doubling) so that slots [0, cap) exist."""
        if cap > self.k.shape[2]:
            extra = max(cap, 2 * self.k.shape[2]) - self.k.shape[2]
            pad = self.k.new_zeros(*self.k.shape[:2], extra, self.k.shape[3])
            self.k, self.v = torch.cat([self.k, pad], 2), torch.cat([self.v, pad], 2)


def window_mask(
    q_cols: torch.Tensor, k_cols: torch.Tensor, doc_start: torch.Tensor, window: int | None
) -> AttentionMask:
    """[B, 1, Q, K] causal (sliding-window) mask over absolute columns; keys before a row's
    document start (left padding) are hidden. Every query sees itself, so padding rows never
    give NaN."""
    diff = q_cols[:, None] - k_cols[None, :]  # [Q, K]
    ok = diff >= 0
    if window is not None:
        ok = ok & (diff < window)
    ok = ok[None] & (k_cols[None, None, :] >= doc_start[:, None, None])  # [B, Q, K]
    return AttentionMask(dense=(ok | (diff == 0)[None])[:, None])


class LeftPadding:
    """Prompts left-padded to one column axis: column c of row r is position c - pad[r].

    Gives a one-column step (column n, past every prompt) its RoPE angles and its mask, with
    views rather than new tensors where it can: steps are op-bound."""

    def __init__(self, lengths: list[int], max_new: int, device: torch.device) -> None:
        self.width = max(lengths)  # prompt columns
        self.pad_list = [self.width - n for n in lengths]
        self.pad = torch.tensor(self.pad_list, device=device)  # [B] document start column
        self.neg_pad = -self.pad[:, None]  # + column = position [B, 1]
        self.pad_max = max(self.pad_list)
        # equal-length prompts (always at batch 1): a column is the same position in every row
        self.same = self.pad_max == min(self.pad_list)
        keys = torch.arange(self.width + max_new + 1, device=device)
        self.key_ok = (keys[None] >= self.pad[:, None])[:, None, None]  # [B, 1, 1, columns]

    def angles(self, rope: RopeTable, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE angles of column n (past every prompt, so no clamp): [B or 1, 1, 1, Dh]."""
        if self.same:
            return rope.span(n - self.pad_list[0], 1)
        return rope(self.neg_pad + n)

    def mask(self, n: int, lo: int) -> torch.Tensor | None:
        """Mask [B, 1, 1, K] of the query at column n over keys [lo, n]: the caller keeps them
        causal and in the window, so only left padding (keys before a row's start) can need
        hiding; None when none is in reach. Column n itself is never padding."""
        return None if lo >= self.pad_max else self.key_ok[..., lo : n + 1]


# ==== single-step stacks ===============================================================
# A cached step runs a stack on one column: a few hundred kilobytes of weights, but ~100 tiny
# ops per layer, so on a CPU (and on a GPU without graphs) the per-op cost dominates. The
# step path below does the same math as ``Block`` / ``WordPooler`` with fewer ops: fused QKV
# and gate/up weights, q and k rotated together, RoPE angles looked up in a table, no module
# dispatch. tests/test_generation.py checks it against the modules and the uncached path.
class RopeTable:
    """``rope_angles`` of every position in [0, size), computed once, indexed per step, laid
    out for ``rotate``: cos as [cos, cos], sin as [-sin, sin] (full head width)."""

    def __init__(self, size: int, head_dim: int, theta: float, device: torch.device) -> None:
        cos, sin = rope_angles(torch.arange(size, device=device), head_dim, theta)
        self.cos, self.sin = torch.cat([cos, cos], -1), torch.cat([-sin, sin], -1)

    def __call__(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[positions], self.sin[positions]  # [..., S, 1, Dh]

    def span(self, first: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions [first, first + count) shared by all rows: views, no index op."""
        return self.cos[first : first + count], self.sin[first : first + count]  # [S, 1, Dh]


def rotate(x: torch.Tensor, angles: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``apply_rope`` in half the ops, bit for bit: x1 cos + x2 (-sin) == x1 cos - x2 sin and
    x2 cos + x1 sin == x1 sin + x2 cos exactly in IEEE arithmetic."""
    cos, sin = angles
    x1, x2 = x.chunk(2, dim=-1)
    out = x * cos + torch.cat([x2, x1], dim=-1) * sin
    return out if out.dtype == x.dtype else out.to(x.dtype)


class StepLayer:
    """``Block.forward`` for decoding: the same weights, fused where ops can be saved.

    Activations stay 2-D ([B * S, D]) so each projection is one ``mm`` with the transposed
    weight view, the very call ``F.linear`` ends in (same result, fewer dispatches).
    ``fuse=False`` keeps q/k/v and gate/up apart: fusing copies the weights, fine for small
    stacks, not for a billion-parameter backbone."""

    def __init__(self, block: Block, fuse: bool = True) -> None:
        attn, mlp = block.attn, block.mlp
        self.heads, self.kv_heads, self.head_dim = attn.n_heads, attn.kv_heads, attn.head_dim
        self.gqa = attn.kv_heads != attn.n_heads
        qkv = [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]
        gate_up = [mlp.gate.weight, mlp.up.weight]
        self.qkv = torch.cat(qkv).t() if fuse else [w.t() for w in qkv]
        self.gate_up = torch.cat(gate_up).t() if fuse else [w.t() for w in gate_up]
        self.o = attn.o_proj.weight.t()
        self.down = mlp.down.weight.t()
        self.attn_norm, self.mlp_norm = block.attn_norm, block.mlp_norm
        self.q_norm, self.k_norm = attn.q_norm, attn.k_norm

    def __call__(
        self,
        x: torch.Tensor,
        batch: int,
        angles: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cache: ColumnCache | RowCache,
    ) -> torch.Tensor:
        """x [B * S, D] (row-major over B, S) -> [B * S, D]."""
        seq, qk_heads = x.shape[0] // batch, self.heads + self.kv_heads
        qkv = _project(rms(self.attn_norm, x), self.qkv)
        qkv = qkv.view(batch, seq, qk_heads + self.kv_heads, self.head_dim)
        qk, v = qkv[:, :, :qk_heads], qkv[:, :, qk_heads:]
        if self.q_norm is not None:
            q, k = qk.split([self.heads, self.kv_heads], dim=2)
            qk = torch.cat([rms(self.q_norm, q), rms(self.k_norm, k)], dim=2)
        qk = rotate(qk, angles).transpose(1, 2)  # q and k in one rotation: [B, H+Hkv, S, Dh]
        k, v = cache.update(qk[:, self.heads :], v.transpose(1, 2))
        out = F.scaled_dot_product_attention(
            qk[:, : self.heads], k, v, attn_mask=mask, enable_gqa=self.gqa
        )
        x = x + torch.mm(out.transpose(1, 2).reshape(x.shape[0], -1), self.o)
        gate, up = _project(rms(self.mlp_norm, x), self.gate_up).chunk(2, dim=-1)
        return x + torch.mm(F.silu(gate) * up, self.down)


FUSE_MAX_PARAMS = 2**25  # stacks up to this size get fused (copied) weights in StepLayer


def step_layers(stack: Transformer) -> list[StepLayer]:
    """The stack's blocks as ``StepLayer``s; fused only when the copies are cheap."""
    fuse = sum(p.numel() for p in stack.parameters()) <= FUSE_MAX_PARAMS
    return [StepLayer(b, fuse) for b in stack.layers]


def _project(x: torch.Tensor, weight: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """x @ weight, or x @ each part, concatenated (an unfused ``StepLayer``)."""
    if isinstance(weight, torch.Tensor):
        return torch.mm(x, weight)
    return torch.cat([torch.mm(x, w) for w in weight], dim=-1)


def rms(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` without nn.Module dispatch (shared by both engines' per-step code)."""
    return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.eps)


class StepPooler:
    """``WordPooler.forward`` for a few words at a time: fused k/v weights, RoPE from a table,
    and the learned query normalised once (it is a constant)."""

    def __init__(self, pooler: WordPooler, rope: RopeTable) -> None:
        self.pooler, self.rope = pooler, rope
        self.heads, self.head_dim = pooler.n_heads, pooler.head_dim
        self.kv = torch.cat([pooler.k_proj.weight, pooler.v_proj.weight])
        q = pooler.query
        self.query = q if pooler.q_norm is None else rms(pooler.q_norm, q)  # [H, Dh]

    def __call__(
        self,
        states: torch.Tensor,
        angles: tuple[torch.Tensor, torch.Tensor],
        end_angles: tuple[torch.Tensor, torch.Tensor],
        offsets: torch.Tensor,
    ) -> torch.Tensor:
        """states [N, De], ``rope`` of the bytes' positions [N] and of the words' last bytes
        [W], offsets [W+1] -> [W, D]."""
        p = self.pooler
        kv = F.linear(rms(p.norm, states), self.kv).view(-1, 2 * self.heads, self.head_dim)
        k, v = kv[:, : self.heads], kv[:, self.heads :]
        if p.k_norm is not None:
            k = rms(p.k_norm, k)
        q = rotate(self.query.expand(offsets.shape[0] - 1, -1, -1), end_angles)
        k = rotate(k, angles)
        pooled = ragged_attention_pool(q, k, v.contiguous(), offsets, p.impl)
        return F.linear(pooled.flatten(1), p.out_proj.weight)  # [W, D]
