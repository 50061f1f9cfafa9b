"""Triton kernels for the ragged steps of HAT: word pooling and word -> byte broadcast.

Layout: words are consecutive runs of bytes, so a tile of BLOCK_W consecutive words owns one
contiguous byte range [offsets[w0], offsets[w0 + BLOCK_W]). Every kernel here gives one
program one such tile (and one head, or one block of channels) and walks the tile's bytes in
blocks of BLOCK_T. Inside a block, an ownership mask [BLOCK_W, BLOCK_T] says which byte belongs
to which word; attention then is flash attention with a block-diagonal mask:

    scores = Q_tile @ K_block^T  (masked to the owner word)  -> online softmax -> @ V_block

Why this shape:
- short words (4-6 bytes on average) are packed BLOCK_W to a program, so a program still
  reads a useful amount of memory; the masked matmul wastes FLOPs, but the op is memory
  bound (about BLOCK_W flops per byte read), so tensor cores absorb it;
- the byte loop has a data-dependent trip count read from `offsets` on the device, so any
  word length (one 5000-byte word) is correct with no host sync and no length buckets;
- every byte belongs to exactly one word, hence to exactly one tile: the backward writes dk
  and dv for its own bytes and needs no atomics. The last tile also covers the bytes past
  offsets[-1] and writes zeros there.

This module imports triton; `hat_kernels.ops` imports it only when triton is installed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

LOG2E = 1.4426950408889634  # exp(x) = exp2(x * LOG2E): exp2 is the fast hardware path
LN2 = 0.6931471805599453

# Autotuning is keyed on bucketed shapes, never on the raw byte/word counts (they change every
# batch): heads, head dim, log2-bucketed word count and bytes-per-word (see `_buckets`).
_POOL_KEY = ["H", "HEAD_DIM", "W_BUCKET", "LEN_BUCKET"]
_BCAST_KEY = ["D", "W_BUCKET", "LEN_BUCKET"]


def _is_interpreter() -> bool:
    """True when `triton.jit` builds interpreter functions (TRITON_INTERPRET=1 at decoration)."""
    try:
        from triton import knobs

        return bool(knobs.runtime.interpret)
    except ImportError:  # older triton: the env var is read directly
        import os

        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Decided once, here, because the decorators below decide it too.
INTERPRETED = _is_interpreter()


def _configs(tiles: list[tuple[int, int, int]]) -> list[triton.Config]:
    """(BLOCK_W, BLOCK_T, num_warps) triples -> configs; a single tiny one in the interpreter."""
    if INTERPRETED:  # the interpreter runs programs in Python: benchmarking configs is pointless
        return [triton.Config({"BLOCK_W": 16, "BLOCK_T": 16}, num_warps=1)]
    return [
        triton.Config({"BLOCK_W": bw, "BLOCK_T": bt}, num_warps=nw, num_stages=ns)
        for bw, bt, nw in tiles
        for ns in (2, 3)
    ]


# ~5 bytes per word: 16 words ~ 80 bytes ~ one 64-128 byte block; more words per program
# amortise the query load but waste more of the masked matmul.
_POOL_CONFIGS = _configs(
    [(16, 32, 4), (16, 64, 4), (32, 64, 4), (32, 128, 4), (64, 128, 4), (64, 128, 8), (64, 256, 8)]
)
_BCAST_CONFIGS = _configs([(16, 32, 4), (16, 64, 4), (32, 128, 4), (64, 256, 8)])


@triton.jit
def _word_tile(OFFSETS, num_words, BLOCK_W: tl.constexpr):
    """This program's words and their byte ranges.

    Returns words [BW] (int32), word_ok [BW], starts/ends [BW] (int64, 0 for padding words),
    the tile's first byte, its end byte and whether it is the last tile.
    """
    w0 = tl.program_id(0) * BLOCK_W
    words = w0 + tl.arange(0, BLOCK_W)
    word_ok = words < num_words
    starts = tl.load(OFFSETS + words, mask=word_ok, other=0)
    ends = tl.load(OFFSETS + words + 1, mask=word_ok, other=0)
    t_lo = tl.load(OFFSETS + w0)
    t_hi = tl.max(ends, axis=0)  # offsets are non-decreasing: the last real word's end
    is_last = w0 + BLOCK_W >= num_words
    return words, word_ok, starts, ends, t_lo, t_hi, is_last


# ---------------------------------------------------------------------------------------------
# ragged attention pooling
# ---------------------------------------------------------------------------------------------


@triton.autotune(configs=_POOL_CONFIGS, key=_POOL_KEY)
@triton.jit
def _pool_fwd_kernel(
    Q,  # [W, H, Dh] contiguous
    K,  # [T, H, Dh] contiguous
    V,  # [T, H, Dh] contiguous
    OFFSETS,  # [W+1] int64
    OUT,  # [W, H, Dh]
    LSE,  # [W, H] fp32, natural log; -inf for an empty word
    num_words,
    H,
    W_BUCKET,  # autotune key only
    LEN_BUCKET,  # autotune key only
    sm_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,  # next power of two >= HEAD_DIM (>= 16 for tl.dot)
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs: tf32 would cost 3 digits
    BLOCK_W: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    h = tl.program_id(1)
    words, word_ok, starts, ends, t_lo, t_hi, is_last = _word_tile(OFFSETS, num_words, BLOCK_W)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    row_w = (words.to(tl.int64) * H + h) * HEAD_DIM  # [BW] start of each (word, head) row
    w_mask = word_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + row_w[:, None] + d[None, :], mask=w_mask, other=0.0)  # [BW, BD]
    qk_scale = sm_scale * LOG2E

    # online softmax state; a finite floor for m keeps exp2(m_old - m_new) NaN-free
    m = tl.full([BLOCK_W], -1.0e30, tl.float32)
    denom = tl.zeros([BLOCK_W], tl.float32)  # softmax denominators, scaled by exp2(-m)
    acc = tl.zeros([BLOCK_W, BLOCK_D], tl.float32)
    for t0 in range(t_lo, t_hi, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)  # [BT] int64
        row_t = (t * H + h) * HEAD_DIM
        t_mask = (t < t_hi)[:, None] & d_ok[None, :]
        k = tl.load(K + row_t[:, None] + d[None, :], mask=t_mask, other=0.0)  # [BT, BD]
        v = tl.load(V + row_t[:, None] + d[None, :], mask=t_mask, other=0.0)  # [BT, BD]
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [BW, BT]
        own = (t[None, :] >= starts[:, None]) & (t[None, :] < ends[:, None])  # [BW, BT]
        s = tl.where(own, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])  # 0 where not owned
        denom = denom * alpha + tl.sum(p, axis=1)
        pv = tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)  # [BW, BD]
        acc = acc * alpha[:, None] + pv
        m = m_new

    has_bytes = denom > 0.0
    denom_safe = tl.where(has_bytes, denom, 1.0)
    out = acc / denom_safe[:, None]  # an empty word: 0 / 1 = 0
    tl.store(OUT + row_w[:, None] + d[None, :], out.to(OUT.dtype.element_ty), mask=w_mask)
    lse = tl.where(has_bytes, (m + tl.log2(denom_safe)) * LN2, float("-inf"))
    tl.store(LSE + words.to(tl.int64) * H + h, lse, mask=word_ok)


@triton.autotune(configs=_POOL_CONFIGS, key=_POOL_KEY)
@triton.jit
def _pool_bwd_kernel(
    Q,  # [W, H, Dh]
    K,  # [T, H, Dh]
    V,  # [T, H, Dh]
    OFFSETS,  # [W+1] int64
    OUT,  # [W, H, Dh] forward output
    DOUT,  # [W, H, Dh]
    LSE,  # [W, H] fp32
    DQ,  # [W, H, Dh]
    DK,  # [T, H, Dh]: every byte written (zeros past offsets[-1])
    DV,  # [T, H, Dh]
    num_words,
    num_bytes,
    H,
    W_BUCKET,
    LEN_BUCKET,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    h = tl.program_id(1)
    words, word_ok, starts, ends, t_lo, t_hi, is_last = _word_tile(OFFSETS, num_words, BLOCK_W)
    # the last tile also zeroes dk/dv of the bytes past offsets[-1] (they belong to no word)
    t_end = tl.where(is_last, num_bytes, t_hi)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    row_w = (words.to(tl.int64) * H + h) * HEAD_DIM
    w_mask = word_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + row_w[:, None] + d[None, :], mask=w_mask, other=0.0)  # [BW, BD]
    o = tl.load(OUT + row_w[:, None] + d[None, :], mask=w_mask, other=0.0)
    do = tl.load(DOUT + row_w[:, None] + d[None, :], mask=w_mask, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)  # [BW] = rowsum(dO * O)
    lse = tl.load(LSE + words.to(tl.int64) * H + h, mask=word_ok, other=0.0)
    lse2 = tl.where(ends > starts, lse * LOG2E, 0.0)  # empty words own no byte: avoid -inf
    qk_scale = sm_scale * LOG2E

    dq = tl.zeros([BLOCK_W, BLOCK_D], tl.float32)
    for t0 in range(t_lo, t_end, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)  # [BT]
        row_t = (t * H + h) * HEAD_DIM
        t_mask = (t < t_end)[:, None] & d_ok[None, :]
        k = tl.load(K + row_t[:, None] + d[None, :], mask=t_mask, other=0.0)  # [BT, BD]
        v = tl.load(V + row_t[:, None] + d[None, :], mask=t_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [BW, BT]
        own = (t[None, :] >= starts[:, None]) & (t[None, :] < ends[:, None])
        p = tl.where(own, tl.exp2(s - lse2[:, None]), 0.0)  # recomputed probabilities
        dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)  # [BT, BD]
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # [BW, BT]
        ds = p * (dp - delta[:, None])  # [BW, BT] softmax backward
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)  # [BT, BD]
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
        dst = row_t[:, None] + d[None, :]
        tl.store(DK + dst, (dk * sm_scale).to(DK.dtype.element_ty), mask=t_mask)
        tl.store(DV + dst, dv.to(DV.dtype.element_ty), mask=t_mask)
    tl.store(DQ + row_w[:, None] + d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty), mask=w_mask)


# ---------------------------------------------------------------------------------------------
# word -> byte broadcast and its backward, the segment sum
# ---------------------------------------------------------------------------------------------


@triton.autotune(configs=_BCAST_CONFIGS, key=_BCAST_KEY)
@triton.jit
def _broadcast_fwd_kernel(
    X,  # [W, D] word values
    OFFSETS,  # [W+1]
    Y,  # [N, D] byte values; rows past offsets[-1] get zeros
    num_words,
    num_bytes,
    D,
    W_BUCKET,
    LEN_BUCKET,
    BLOCK_D: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    words, word_ok, starts, ends, t_lo, t_hi, is_last = _word_tile(OFFSETS, num_words, BLOCK_W)
    t_end = tl.where(is_last, num_bytes, t_hi)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < D
    w0 = tl.program_id(0) * BLOCK_W
    for t0 in range(t_lo, t_end, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)  # [BT]
        t_ok = t < t_end
        # owner = w0 + number of tile words that end at or before t (a gather, exact in any dtype)
        before = (ends[:, None] <= t[None, :]) & word_ok[:, None]  # [BW, BT]
        owner = w0 + tl.sum(before.to(tl.int32), axis=0)  # [BT]
        owned = t_ok & (t < t_hi)  # bytes past offsets[-1] stay zero
        x = tl.load(
            X + owner.to(tl.int64)[:, None] * D + d[None, :],
            mask=owned[:, None] & d_ok[None, :],
            other=0.0,
        )  # [BT, BD]
        tl.store(Y + t[:, None] * D + d[None, :], x, mask=t_ok[:, None] & d_ok[None, :])


@triton.autotune(configs=_BCAST_CONFIGS, key=_BCAST_KEY)
@triton.jit
def _segment_sum_kernel(
    G,  # [N, D] byte gradients
    OFFSETS,  # [W+1]
    DX,  # [W, D] per-word sums
    num_words,
    D,
    W_BUCKET,
    LEN_BUCKET,
    DOT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    words, word_ok, starts, ends, t_lo, t_hi, is_last = _word_tile(OFFSETS, num_words, BLOCK_W)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = d < D
    acc = tl.zeros([BLOCK_W, BLOCK_D], tl.float32)
    for t0 in range(t_lo, t_hi, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        g = tl.load(
            G + t[:, None] * D + d[None, :], mask=(t < t_hi)[:, None] & d_ok[None, :], other=0.0
        )
        own = (t[None, :] >= starts[:, None]) & (t[None, :] < ends[:, None])  # [BW, BT]
        # one-hot matmul = segment sum, exact: each product is 0 or one g value, fp32 accumulate
        acc += tl.dot(own.to(g.dtype), g, input_precision=DOT_PRECISION)
    dst = DX + words.to(tl.int64)[:, None] * D + d[None, :]
    tl.store(dst, acc.to(DX.dtype.element_ty), mask=word_ok[:, None] & d_ok[None, :])


# ---------------------------------------------------------------------------------------------
# launchers (called from the torch.library ops in hat_kernels.ops)
# ---------------------------------------------------------------------------------------------


def _next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _buckets(num_words, num_bytes) -> tuple[int, int]:
    """Autotune keys: log2 buckets of the word count and of bytes per word.

    Under torch.compile with dynamic shapes the counts are symbolic; inductor then tunes the
    kernel once per graph itself, so a constant 0 is passed (no guard on the sizes).
    """
    if not (isinstance(num_words, int) and isinstance(num_bytes, int)):
        return 0, 0
    per_word = -(-num_bytes // max(num_words, 1))
    return _next_pow2(num_words), min(_next_pow2(per_word), 256)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs would run in tf32 by default (10-bit mantissa): keep them exact
    return "ieee" if dtype == torch.float32 else "tf32"


def _pool_grid(num_words, num_heads):
    return lambda meta: (triton.cdiv(num_words, meta["BLOCK_W"]), num_heads)


def pool_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton forward: (out [W, H, Dh] in q's dtype, lse [W, H] fp32). No host sync."""
    q, k, v, offsets = q.contiguous(), k.contiguous(), v.contiguous(), offsets.contiguous()
    num_words, num_heads, head_dim = q.shape
    head_dim = int(head_dim)  # a compile-time constant of the kernel (specialises if symbolic)
    out = torch.empty_like(q)
    lse = torch.empty((num_words, num_heads), device=q.device, dtype=torch.float32)
    if num_words == 0:
        return out, lse
    w_bucket, len_bucket = _buckets(num_words, k.shape[0])
    args = (q, k, v, offsets, out, lse, num_words, num_heads, w_bucket, len_bucket, head_dim**-0.5)
    meta = dict(
        HEAD_DIM=head_dim,
        BLOCK_D=max(16, _next_pow2(head_dim)),
        DOT_PRECISION=_dot_precision(q.dtype),
    )
    grid = _pool_grid(num_words, num_heads)
    if config is None:  # autotuned
        wrap_triton(_pool_fwd_kernel)[grid](*args, **meta)
    else:  # a fixed tile config (tests)
        wrap_triton(_pool_fwd_kernel.fn)[grid](*args, **meta, **config)
    return out, lse


def pool_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    config: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton backward: (dq, dk, dv), each like its input. No atomics, no host sync."""
    dout, q, k, v = dout.contiguous(), q.contiguous(), k.contiguous(), v.contiguous()
    out, lse, offsets = out.contiguous(), lse.contiguous(), offsets.contiguous()
    num_words, num_heads, head_dim = q.shape
    head_dim = int(head_dim)
    num_bytes = k.shape[0]
    dq = torch.empty_like(q)
    if num_words == 0:  # no program runs, so nothing would write dk/dv
        return dq, torch.zeros_like(k), torch.zeros_like(v)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    w_bucket, len_bucket = _buckets(num_words, num_bytes)
    args = (q, k, v, offsets, out, dout.to(q.dtype), lse, dq, dk, dv)
    args += (num_words, num_bytes, num_heads, w_bucket, len_bucket, head_dim**-0.5)
    meta = dict(
        HEAD_DIM=head_dim,
        BLOCK_D=max(16, _next_pow2(head_dim)),
        DOT_PRECISION=_dot_precision(q.dtype),
    )
    grid = _pool_grid(num_words, num_heads)
    if config is None:  # autotuned
        wrap_triton(_pool_bwd_kernel)[grid](*args, **meta)
    else:  # a fixed tile config (tests)
        wrap_triton(_pool_bwd_kernel.fn)[grid](*args, **meta, **config)
    return dq, dk, dv


def _bcast_grid(num_words, dim, block_d):
    return lambda meta: (triton.cdiv(num_words, meta["BLOCK_W"]), triton.cdiv(dim, block_d))


def _bcast_block_d(dim: int) -> int:
    # 16..128 channels per program: wide enough for coalesced rows, small enough for registers
    return min(128, max(16, _next_pow2(int(dim))))


def broadcast_forward(
    word_values: torch.Tensor, offsets: torch.Tensor, num_bytes: int, config: dict | None = None
) -> torch.Tensor:
    """Triton gather [W, D] -> [num_bytes, D]; rows past offsets[-1] are zero."""
    word_values, offsets = word_values.contiguous(), offsets.contiguous()
    num_words, dim = word_values.shape
    if num_words == 0:
        return word_values.new_zeros(num_bytes, dim)
    out = word_values.new_empty(num_bytes, dim)
    block_d = _bcast_block_d(dim)
    w_bucket, len_bucket = _buckets(num_words, num_bytes)
    args = (word_values, offsets, out, num_words, num_bytes, dim, w_bucket, len_bucket)
    grid = _bcast_grid(num_words, dim, block_d)
    if config is None:  # autotuned
        wrap_triton(_broadcast_fwd_kernel)[grid](*args, BLOCK_D=block_d)
    else:  # a fixed tile config (tests)
        wrap_triton(_broadcast_fwd_kernel.fn)[grid](*args, BLOCK_D=block_d, **config)
    return out


def segment_sum(
    grad: torch.Tensor, offsets: torch.Tensor, num_words: int, config: dict | None = None
) -> torch.Tensor:
    """Triton segment sum [N, D] -> [W, D]: word w gets the sum of rows offsets[w]:offsets[w+1]."""
    grad, offsets = grad.contiguous(), offsets.contiguous()
    num_bytes, dim = grad.shape
    out = grad.new_empty(num_words, dim)
    if num_words == 0:
        return out
    block_d = _bcast_block_d(dim)
    w_bucket, len_bucket = _buckets(num_words, num_bytes)
    args = (grad, offsets, out, num_words, dim, w_bucket, len_bucket)
    meta = dict(DOT_PRECISION=_dot_precision(grad.dtype), BLOCK_D=block_d)
    grid = _bcast_grid(num_words, dim, block_d)
    if config is None:  # autotuned
        wrap_triton(_segment_sum_kernel)[grid](*args, **meta)
    else:  # a fixed tile config (tests)
        wrap_triton(_segment_sum_kernel.fn)[grid](*args, **meta, **config)
    return out
