"""The transformer block shared by the byte encoder, the word backbone and the byte decoder.

Llama-style: pre-RMSNorm, rotary position embeddings, grouped-query attention (optional
QK-norm, optional sliding window), SwiGLU MLP. Sequences are packed: several documents share a
row, and ``AttentionMask`` keeps every query inside its own document.

One implementation serves training, scoring and cached decoding. Inside a stack activations
are flat rows [B * S, D], so every projection is a single 2-D matrix product whether S is a
training row or one decoded position; with a ``KVCache`` per layer, a forward over new
positions attends to everything cached before them.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from dataclasses import dataclass
from typing import Any

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
        # the weight in x's dtype: under bf16 autocast (fp32 weights, bf16 activations, e.g.
        # QK-norm on a projection's output) torch falls back from its fused kernel to several ops
        weight = self.weight if self.weight.dtype == x.dtype else self.weight.to(x.dtype)
        return F.rms_norm(x, (x.shape[-1],), weight, self.eps)


def stage(name: str) -> contextlib.AbstractContextManager:
    """A ``torch.profiler`` label for one stage of a forward (``hat.encoder``, ...): what the
    profile breakdown of ``scripts/bench_train.py --profile`` groups by. A no-op unless a
    profiler is running (and inside compiled code, where it would only break the graph)."""
    if torch.compiler.is_compiling() or not torch.autograd.profiler._is_profiler_enabled:
        return contextlib.nullcontext()
    return torch.profiler.record_function(name)


# ---- rotary position embeddings -------------------------------------------------------------
def rope_angles(
    positions: torch.Tensor, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles for integer positions [..., S] -> 2 x [..., S, 1, Dh/2]."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
    angles = positions.float()[..., None, None] * inv_freq  # fp32: positions reach 1e4+
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE: rotate the pairs (x[..., :Dh/2], x[..., Dh/2:]) of x [..., Dh] by the angles of
    ``RotaryEmbedding`` (cos laid out as [cos, cos], sin as [-sin, sin]).

    x1 cos + x2 (-sin) and x2 cos + x1 sin: the textbook rotation, exactly, in two products and
    a sum. Computed in fp32 (the table's dtype) and returned in x's dtype.
    """
    x1, x2 = x.chunk(2, dim=-1)
    out = x * cos + torch.cat([x2, x1], dim=-1) * sin
    return out if out.dtype == x.dtype else out.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin of every position in [0, size) as a table, looked up by position.

    A non-persistent buffer (state dicts are unchanged), always fp32, grown on demand (by
    doubling): ``forward`` makes room for int positions; tensor positions must be below the
    size ``reserve`` was given.

    Compiled code cannot grow the table (a buffer that changes shape recompiles the graph), so
    there tensor positions whose bound the table does not cover get their angles from the
    formula, in the graph. That is exact but slow: inductor inlines the cos and sin into every
    consumer, recomputing them for each head of each layer (a tenth of a compiled HAT training
    step on a CPU). ``reserve_positions`` before compiling keeps compiled code on the table.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self.register_buffer("cos", torch.empty(0, 1, head_dim), persistent=False)
        self.register_buffer("sin", torch.empty(0, 1, head_dim), persistent=False)

    def reserve(self, size: int) -> None:
        """Make positions [0, size) available."""
        if torch.compiler.is_compiling():  # compiled code computes tensor positions' angles
            return
        cos = self.cos
        if size <= cos.shape[0] and cos.dtype == torch.float32:
            return
        n = max(size, 2 * cos.shape[0], 64)
        half_cos, half_sin = rope_angles(
            torch.arange(n, device=cos.device), self.head_dim, self.theta
        )  # [n, 1, Dh/2]
        self.cos = torch.cat([half_cos, half_cos], dim=-1)
        self.sin = torch.cat([-half_sin, half_sin], dim=-1)

    def forward(
        self, positions: torch.Tensor | int, count: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Angles of ``positions`` [..., S] -> 2 x [..., S, 1, Dh]; or of the ``count``
        positions from the int ``positions`` on, shared by every row -> 2 x [count, 1, Dh]
        (views of the table: no index op). Tensor positions are below ``count`` or below a
        size given to ``reserve``."""
        if isinstance(positions, int):
            end = positions + count
            if end > self.cos.shape[0] or self.cos.dtype != torch.float32:
                self.reserve(end)
            return self.cos[positions:end], self.sin[positions:end]
        if torch.compiler.is_compiling() and not self.covers(count):
            # the same formula as the table, in the graph: a table that grows during tracing
            # would change shape after the first call and recompile the graph
            half_cos, half_sin = rope_angles(positions, self.head_dim, self.theta)
            return torch.cat([half_cos, half_cos], -1), torch.cat([-half_sin, half_sin], -1)
        return self.cos[positions], self.sin[positions]

    def covers(self, count: int) -> bool:
        """Whether the table holds positions [0, count), in fp32."""
        return count <= self.cos.shape[0] and self.cos.dtype == torch.float32


def reserve_positions(model: nn.Module, size: int) -> None:
    """Make positions [0, size) available in every RoPE table of ``model``: before compiling
    (compiled code reads the tables and cannot grow them) or decoding with tensor positions."""
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            module.reserve(size)


# ---- masks and caches -----------------------------------------------------------------------
@dataclass
class AttentionMask:
    """Which keys each query may see: same document, not in the future, within the window.

    ``dense`` is a bool tensor [B, 1, Sq, Sk] for SDPA; ``block`` a flex-attention BlockMask;
    ``causal``: SDPA's own causal mask. Exactly one is set. Build with ``AttentionMask.packed``
    (training / scoring) or pass a dense mask directly (cached decoding, where ``None`` means
    "every cached key").
    """

    dense: torch.Tensor | None = None
    block: object | None = None
    chunk: int = 0  # > 0: sliding-window attention by chunks of queries, see `packed`
    causal: bool = False
    # the mask covers every row of the caches, not only the step's rows (``cache_rows``): the
    # keys are read in place (rows outside the step's see none), not copied out
    every_row: bool = False

    @staticmethod
    def packed(
        doc_ids: torch.Tensor,
        window: int | None,
        impl: str = "auto",
        padding: torch.Tensor | None = None,
    ) -> AttentionMask:
        """Causal, document-isolated (and optionally sliding-window) mask for rows [B, S].

        With SDPA and a window well below the row, the row is cut into chunks of ``CHUNK``
        queries, each attending to the keys of its own chunk and of the chunks before it that
        its window reaches (``chunked_attention``): at window 256 and a 512-byte row, 240 keys
        per query on average (320 once the window lies inside the row, fewer before) where a
        dense mask computes all 512 and the window lets 192 through on average.

        ``padding`` [B, S] marks the padding at the rows' ends (whose outputs nobody reads):
        when every row is one document before its padding and no window is narrower than the
        row (what ``score`` collates), SDPA's own causal mask serves, exact for every other
        position, where a dense [S, S] mask would compute the keys after each query too.
        """
        if impl == "auto":
            impl = "flex" if doc_ids.is_cuda else "sdpa"
        if impl == "flex":
            return AttentionMask(block=_flex_block_mask(doc_ids, window))
        seq = doc_ids.shape[1]
        if window is not None and 4 * (window + CHUNK) <= 3 * round_up(seq, CHUNK):
            return _chunked_mask(doc_ids, window)
        if (window is None or window >= seq) and one_document_per_row(doc_ids, padding):
            return AttentionMask(causal=True)
        idx = torch.arange(seq, device=doc_ids.device)
        allowed = idx[None, :] <= idx[:, None]  # causal [S, S]
        if window is not None:
            allowed = allowed & (idx[:, None] - idx[None, :] < window)
        same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]  # [B, S, S]
        return AttentionMask(dense=(allowed & same_doc)[:, None])


CHUNK = 64  # queries per chunk of chunked sliding-window attention


def one_document_per_row(doc_ids: torch.Tensor, padding: torch.Tensor | None) -> bool:
    """Whether every row of ``doc_ids`` [B, S] is one document followed by its ``padding``
    (a suffix). Never in compiled code: the answer depends on values (a graph break)."""
    if padding is None or torch.compiler.is_compiling():
        return False
    suffix = bool((padding[:, 1:] >= padding[:, :-1]).all())  # no real position after padding
    return suffix and bool(((doc_ids == doc_ids[:, :1]) | padding).all())


def round_up(n: int, unit: int) -> int:
    """n rounded up to a multiple of ``unit``."""
    return -(-n // unit) * unit


def _chunked_mask(doc_ids: torch.Tensor, window: int) -> AttentionMask:
    """Mask [B * S/C, 1, C, K] of chunked attention: query i of chunk c sits at c*C + i, key j
    of its span at (c - n)*C + j, K = (n + 1) * C keys: the chunk and the n = ceil((window - 1)
    / C) chunks before it (as far back as the window reaches).

    A row whose length is no multiple of C is padded at its end with a document of its own
    (id -1: no real query sees it, each padding query sees itself); ``chunked_attention`` pads
    q, k and v to match and drops those queries' outputs."""
    pad = -doc_ids.shape[1] % CHUNK
    doc_ids = F.pad(doc_ids, (0, pad), value=-1)  # document ids are >= 0
    batch, seq = doc_ids.shape
    back = -(-(window - 1) // CHUNK)
    span, chunks, device = (back + 1) * CHUNK, seq // CHUNK, doc_ids.device
    q_pos = torch.arange(seq, device=device).view(chunks, CHUNK, 1)  # [nC, C, 1]
    k_pos = q_pos[:, :1] - back * CHUNK + torch.arange(span, device=device)  # [nC, 1, K]
    allowed = (k_pos >= 0) & (k_pos <= q_pos) & (q_pos - k_pos < window)  # [nC, C, K]
    key_doc = doc_ids[:, k_pos.clamp(min=0)]  # [B, nC, 1, K] (keys before the row: not allowed)
    same_doc = doc_ids.view(batch, chunks, CHUNK, 1) == key_doc  # [B, nC, C, K]
    dense = (allowed & same_doc).view(batch * chunks, 1, CHUNK, span)
    return AttentionMask(dense=dense, chunk=CHUNK)


def chunked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttentionMask, gqa: bool
) -> torch.Tensor:
    """Sliding-window attention by chunks of queries (``_chunked_mask``'s layout).

    q [B, H, S, Dh], k and v [B, Hkv, S, Dh] -> [B, H, S, Dh]. Each chunk's keys are a window
    of the row: a copy of (K / C) x the keys, small next to the attention itself. The first
    ``back`` chunks' windows reach before the row: each attends to its (c + 1) * C real keys
    only, in a call of its own (for 512-byte rows at window 256, a quarter of the keys a single
    call would compute are such padding). Inputs are cut with ``split`` and ``KeyWindows``,
    whose gradients go back in one copy (a slice's would zero-fill a full-size buffer);
    without autograd rows run one at a time and their windows are views (``key_window_views``).
    """
    batch, heads, length, head_dim = q.shape
    chunk, span = mask.chunk, mask.dense.shape[-1]
    chunks, back = mask.dense.shape[0] // batch, span // chunk - 1
    if batch > 1 and not torch.is_grad_enabled() and q.device.type == "cpu":
        # a row at a time takes views of the keys where the batch would copy them: ~1.2-1.8x
        # faster attention on a CPU for 2-8 rows of 0.5-1 KB, despite the extra calls (on a
        # GPU, not measured, the calls would cost launches)
        rows = [slice(b, b + 1) for b in range(batch)]
        outs = [chunked_attention(q[r], k[r], v[r], _rows_of(mask, r, chunks), gqa) for r in rows]
        return torch.cat(outs)  # [B, H, S, Dh]
    seq = chunks * chunk  # the row padded to whole chunks (see ``_chunked_mask``)
    if seq > length:
        q, k, v = (F.pad(x, (0, 0, 0, seq - length)) for x in (q, k, v))
    full = chunks - back  # chunks whose whole window lies in the row
    dense = mask.dense.view(batch, chunks, 1, chunk, span)
    cuts = [chunk] * back + [full * chunk]
    q_parts, k_parts, v_parts = (x.split(cuts, dim=2) for x in (q, k, v))
    # without autograd, one row's key prefixes and windows are views of k and v (overlapping
    # windows: no copy); with it, copies whose backward adds into one buffer (KeyWindows)
    views = batch == 1 and not torch.is_grad_enabled()
    outs = []
    for c in range(back):  # [B, H, C, Dh] each: keys 0 .. (c + 1) * C - 1 of the row
        end = (c + 1) * chunk
        out = F.scaled_dot_product_attention(
            q_parts[c],
            k[:, :, :end] if views else torch.cat(k_parts[: c + 1], dim=2),
            v[:, :, :end] if views else torch.cat(v_parts[: c + 1], dim=2),
            attn_mask=dense[:, c, :, :, (back - c) * chunk :],
            enable_gqa=gqa,
        )
        outs.append(out)
    q_full = q_parts[-1].reshape(batch, heads, full, chunk, head_dim).transpose(1, 2)
    windows = key_window_views if views else KeyWindows.apply
    out = F.scaled_dot_product_attention(
        q_full.reshape(batch * full, heads, chunk, head_dim),
        windows(k, chunk, back),
        windows(v, chunk, back),
        attn_mask=dense[:, back:].reshape(batch * full, 1, chunk, span),
        enable_gqa=gqa,
    )  # [B * nF, H, C, Dh]
    out = out.view(batch, full, heads, chunk, head_dim).transpose(1, 2)
    outs.append(out.reshape(batch, heads, full * chunk, head_dim))
    out = torch.cat(outs, dim=2)
    return out if seq == length else out[:, :, :length]


def _rows_of(mask: AttentionMask, rows: slice, chunks: int) -> AttentionMask:
    """The chunked mask of ``rows`` (each row owns ``chunks`` consecutive chunk masks)."""
    dense = mask.dense[rows.start * chunks : rows.stop * chunks]
    return AttentionMask(dense=dense, chunk=mask.chunk)


def key_window_views(x: torch.Tensor, chunk: int, back: int) -> torch.Tensor:
    """``KeyWindows``' result for one row, x [1, Hkv, S, Dh] -> [nF, Hkv, K, Dh], as a view of
    x: consecutive windows overlap in memory (their start moves by C positions). Inference
    only (the backward of a strided view would scatter into a zero-filled buffer)."""
    _, heads, seq, head_dim = x.shape
    full = seq // chunk - back
    _, stride_h, stride_s, stride_d = x.stride()
    return x.as_strided(
        (full, heads, (back + 1) * chunk, head_dim),
        (chunk * stride_s, stride_h, stride_s, stride_d),
        x.storage_offset(),
    )


class KeyWindows(torch.autograd.Function):
    """Keys (or values) [B, Hkv, S, Dh] -> the windows of the chunks from ``back`` on, [B * nF,
    Hkv, K, Dh]: chunk j's window is chunks j - back .. j, K = (back + 1) * C positions.

    The backward adds each window's gradient into one buffer in place: written as slices of x
    and a ``cat``, autograd would zero-fill a full-size gradient for every slice (a tenth of a
    byte layer's attention time at 512-byte rows).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, chunk: int, back: int) -> torch.Tensor:
        batch, heads, seq, head_dim = x.shape
        ctx.shape, ctx.chunk, ctx.back = x.shape, chunk, back
        chunks = seq // chunk
        full = chunks - back
        x = x.view(batch, heads, chunks, chunk, head_dim).transpose(1, 2)  # [B, nC, Hkv, C, Dh]
        windows = torch.cat([x[:, i : i + full] for i in range(back + 1)], dim=3)  # one copy
        return windows.view(batch * full, heads, -1, head_dim)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        batch, heads, seq, head_dim = ctx.shape
        chunk, back = ctx.chunk, ctx.back
        chunks = seq // chunk
        full = chunks - back
        grad = grad.view(batch, full, heads, back + 1, chunk, head_dim).transpose(1, 2)
        out = grad.new_zeros(batch, heads, chunks, chunk, head_dim)
        for i in range(back + 1):  # window slot i of chunk j holds chunk j - back + i
            out[:, :, i : i + full] += grad[:, :, :, i]
        return out.view(batch, heads, seq, head_dim), None, None


def _flex_block_mask(doc_ids: torch.Tensor, window: int | None) -> object:
    def mask_mod(b, h, q, k):  # noqa: ANN001 - flex attention's signature
        ok = (k <= q) & (doc_ids[b, q] == doc_ids[b, k])
        return ok & (q - k < window) if window is not None else ok

    batch, seq = doc_ids.shape
    create = _create_block_mask(doc_ids.is_cuda)
    return create(mask_mod, batch, None, seq, seq, device=doc_ids.device)


@functools.cache
def _create_block_mask(compiled: bool):  # noqa: ANN202
    """create_block_mask, compiled on GPU: compiled, it never materialises the [B, S, S]
    boolean mask. (torch.compile of the function, as torch's docs say; its old
    ``_compile=True`` flag is deprecated and warns on every call.)"""
    from torch.nn.attention.flex_attention import create_block_mask

    return torch.compile(create_block_mask) if compiled else create_block_mask


@functools.cache
def _flex_attention(compiled: bool):  # noqa: ANN202
    """flex_attention, compiled on GPU (uncompiled it materialises the scores: slow).

    Not ``dynamic=False``: rows of other lengths (``score`` collates to a batch's longest
    document) would each compile anew, and past dynamo's limit of 8 fall back to the
    uncompiled kernel. Left to automatic dynamic shapes, the second length compiles a graph that
    serves every later one (on a CPU: 6 lengths, 6 graphs and ~3.5 s each with
    ``dynamic=False``; 2 graphs without)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention) if compiled else flex_attention


class KVCache:
    """Keys and values of one attention layer, preallocated as [B, Hkv, capacity, Dh].

    ``update(k, v, pos)`` writes the new entries at the positions it is given (overwriting:
    positions may be recomputed) and returns the cached entries a query there may attend to.
    ``pos`` is an int (S new entries at positions pos..pos+S-1 of every row) or a tensor [B]
    (one new entry per row, each at its own position: rows of the word backbone finish words
    at different steps; ``end`` then bounds what is returned, and in a sliding cache ``first``,
    the smallest of them, where the returned window starts: rows of HAT's byte stacks stand
    at different columns when some wait for the backbone). With per-row positions, ``rows``
    [R] says which of the cache's rows the R new entries belong to (default: all): the
    backbone runs only the rows that finished a word. The caller's mask hides what a row's
    query must not see of what comes back.

    Static shapes (``generate(compile_step=True)``): ``pos`` a 0-d tensor is the *slot* (see
    ``fit``) where one new entry of every row goes, and a per-row ``pos`` without ``end`` is
    per-row slots (of ``rows``, if given); either way the whole buffers (of those rows) come
    back, the same shapes at every step, and the caller's attention mask hides the slots a
    query must not see.

    With a ``window`` the cache slides: a write past the end keeps only the ``keep`` positions
    before it (at least ``window``; more if later writes may start further back). Without one
    it grows (doubling) as needed.
    """

    def __init__(
        self,
        batch: int,
        kv_heads: int,
        head_dim: int,
        capacity: int,
        *,
        window: int | None = None,
        keep: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        self.window = window
        self.keep = window if keep is None else keep
        if window is not None and self.keep < window:
            raise ValueError(f"a sliding KVCache must keep at least its window: {keep} < {window}")
        self.k = torch.zeros(batch, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.offset = 0  # position held in slot 0 (a sliding cache has dropped those before)
        self.rows = torch.arange(batch, device=device)
        self.is_view = False  # a view of some rows (``row_view``) cannot grow or slide

    def row_view(self, rows: slice) -> KVCache:
        """The cache of ``rows`` alone, sharing this one's buffers: writes show in both. For a
        prefill by groups of rows (``hat.batching.row_groups``); it must fit the
        buffers as they are (a view cannot reallocate or slide its parent's)."""
        view = copy.copy(self)
        view.k, view.v = self.k[rows], self.v[rows]
        view.rows = torch.arange(view.k.shape[0], device=self.k.device)
        view.is_view = True
        return view

    def fit(self, pos: int, end: int | None = None) -> int:
        """Make room (grow, or slide) for positions [pos, end) (default: ``pos`` alone);
        return the slot that holds ``pos``. A static-shape step calls it before writing by slot."""
        end = pos + 1 if end is None else end
        if end - self.offset > self.k.shape[2]:
            self._make_room(pos, end)
        return pos - self.offset

    def hold_from(self, first: int) -> None:
        """Before the first write: hold positions from ``first`` on. A prefill of more positions
        than the buffer holds (a long prompt) then keeps only its last ones, those later
        queries may see (at least ``keep``), and its own queries attend to every new key."""
        if self.window is None or first < 0:
            raise ValueError(f"KVCache.hold_from({first}) needs a sliding cache and first >= 0")
        self.offset = first

    def read_start(self, pos: int) -> int:
        """First position a query at ``pos`` attends to (the start of its window)."""
        return 0 if self.window is None else max(pos - self.window + 1, 0)

    def update(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        pos: int | torch.Tensor,
        end: int | None = None,
        rows: torch.Tensor | None = None,
        first: int | None = None,
        gather: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, Hkv, S, Dh] at ``pos``; return the keys and values of positions
        [read_start(pos), pos + S) (int ``pos``), of every slot (a 0-d slot), or of positions
        [read_start(first), end) (per-row ``pos``, ``first`` its smallest, default 0; every
        slot without ``end``), of ``rows`` if given (``gather=False``: of every row, read in
        place by queries of ``rows`` alone, ``AttentionMask.every_row``)."""
        if isinstance(pos, int):
            end = pos + k.shape[2]
            if pos < self.offset:  # a prefill longer than the buffer (``hold_from``)
                return self._write_tail(k, v, pos, end)
            if end - self.offset > self.k.shape[2]:
                self._make_room(pos, end)
            start = self._read_slot(pos)
            a, b = pos - self.offset, end - self.offset
            self.k[:, :, a:b] = k
            self.v[:, :, a:b] = v
            return self.k[:, :, start:b], self.v[:, :, start:b]
        if pos.dim() == 0:  # static: one slot for every row, k, v [B, Hkv, 1, Dh]
            self.k.index_copy_(2, pos[None], k)
            self.v.index_copy_(2, pos[None], v)
            return self.k, self.v  # [B, Hkv, capacity, Dh]
        if self.window is not None and end is not None and first is None:
            raise ValueError("per-row positions in a sliding cache need `first` with `end`")
        first = 0 if first is None else first
        if end is not None and end - self.offset > self.k.shape[2]:
            self._make_room(first, end)
        which = self.rows if rows is None else rows
        # with `end`, positions (a sliding cache's slot 0 holds position `offset`); without,
        # static steps give slots already
        slots = pos if end is None or not self.offset else pos - self.offset
        self.k[which, :, slots] = k[:, :, 0]  # [R, Hkv, Dh] at slot pos[i] of row which[i]
        self.v[which, :, slots] = v[:, :, 0]
        if end is None:
            keys, values = self.k, self.v
        else:
            start = self._read_slot(first)
            keys, values = (
                self.k[:, :, start : end - self.offset],
                self.v[:, :, start : end - self.offset],
            )
        if rows is not None and gather:  # a subset of the rows: theirs (copies) [R, Hkv, end, Dh]
            keys, values = keys[rows], values[rows]
        return keys, values

    def _read_slot(self, pos: int) -> int:
        """The slot of the first key a query at ``pos`` reads (an error if it slid out)."""
        start = self.read_start(pos) - self.offset
        if start < 0:
            raise ValueError(f"KVCache: position {pos} needs keys this cache slid past")
        return start

    def _write_tail(
        self, k: torch.Tensor, v: torch.Tensor, pos: int, end: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first write, of positions [0, end), into a buffer that holds from ``offset``:
        positions from the offset on are kept; the queries of the write see all of k, v."""
        if pos != 0 or end - self.offset > self.k.shape[2]:
            raise ValueError(
                f"KVCache: a write of positions [{pos}, {end}) into a buffer holding "
                f"{self.k.shape[2]} positions from {self.offset}"
            )
        skip = self.offset - pos
        self.k[:, :, : end - self.offset] = k[:, :, skip:]
        self.v[:, :, : end - self.offset] = v[:, :, skip:]
        return k, v

    def _make_room(self, pos: int, end: int) -> None:
        """Grow, or slide, so that positions up to ``end`` fit."""
        capacity = self.k.shape[2]
        if self.is_view:
            raise ValueError(
                f"KVCache: a row view holds {capacity} positions from {self.offset}; "
                f"positions [{pos}, {end}) need its parent to make room first"
            )
        if self.window is None:  # grow
            batch, heads, _, head_dim = self.k.shape
            pad = self.k.new_zeros(batch, heads, max(end, 2 * capacity) - capacity, head_dim)
            self.k, self.v = torch.cat([self.k, pad], 2), torch.cat([self.v, pad], 2)
            return
        first = pos - self.keep  # slide: keep positions [pos - keep, pos) and the write
        if first < self.offset or end - first > capacity:
            raise ValueError(
                f"KVCache: a write of positions [{pos}, {end}) does not fit (capacity "
                f"{capacity}, keep {self.keep}, holding from {self.offset})"
            )
        shift = first - self.offset
        for t in (self.k, self.v):
            t[:, :, : capacity - shift] = t[:, :, shift:].clone()
        self.offset = first


@dataclass
class LayerContext:
    """What every layer of one stack forward shares: the batch size (activations are flat
    rows [B * S, D]), the RoPE angles of the S positions, the attention mask and where the
    layers' caches write (see ``KVCache.update``)."""

    batch: int
    rope: tuple[torch.Tensor, torch.Tensor]
    mask: AttentionMask | None
    cache_pos: int | torch.Tensor = 0
    cache_end: int | None = None
    cache_rows: torch.Tensor | None = None
    cache_first: int | None = None


# ---- the block ------------------------------------------------------------------------------
def fuse_on_load(parts: tuple[str, ...], fused: str) -> Any:
    """A load_state_dict pre-hook: state dicts saved before the projections ``parts`` were
    fused into ``fused`` (rows concatenated in that order) load into the fused layout."""

    def hook(module, state_dict, prefix, *_) -> None:  # noqa: ANN001
        names = [f"{prefix}{p}.weight" for p in parts]
        if all(n in state_dict for n in names):
            state_dict[f"{prefix}{fused}.weight"] = torch.cat([state_dict.pop(n) for n in names])

    return hook


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE, optional QK-norm and an optional KV cache.

    ``qkv`` is one projection whose output rows are q | k | v.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.register_load_state_dict_pre_hook(fuse_on_load(("q_proj", "k_proj", "v_proj"), "qkv"))

    def forward(
        self, x: torch.Tensor, ctx: LayerContext, cache: KVCache | None = None
    ) -> torch.Tensor:
        """x [B * S, D] -> [B * S, D]."""
        heads, qk_heads = self.n_heads, self.n_heads + self.kv_heads
        qkv = self.qkv(x).view(ctx.batch, -1, qk_heads + self.kv_heads, self.head_dim)
        # split, not slices: the backward of a slice zero-fills a gradient of its whole input
        qk, v = qkv.split([qk_heads, self.kv_heads], dim=2)  # [B, S, H + Hkv, Dh], [B, S, Hkv, Dh]
        if self.q_norm is not None:
            q, k = qk.split([heads, self.kv_heads], dim=2)
            # under CUDA autocast the norms return fp32: back to v's dtype (flex wants one)
            qk = torch.cat([self.q_norm(q), self.k_norm(k)], dim=2).to(v.dtype)
        qk = rotate(qk, *ctx.rope).transpose(1, 2)  # q and k in one rotation: [B, H+Hkv, S, Dh]
        q, k = qk.split([heads, self.kv_heads], dim=1)
        v = v.transpose(1, 2)
        mask, rows = ctx.mask, ctx.cache_rows
        in_place = rows is not None and mask is not None and mask.every_row
        if cache is not None:
            k, v = cache.update(
                k, v, ctx.cache_pos, ctx.cache_end, rows, ctx.cache_first, not in_place
            )  # k, v [B, Hkv, S_cached, Dh]
        if in_place:  # the rows' queries among every cache row's: [B_cache, H, 1, Dh]
            q = q.new_zeros(k.shape[0], *q.shape[1:]).index_copy(0, rows, q)
        if mask is not None and mask.block is not None:
            out = _flex_attention(q.is_cuda)(q, k, v, block_mask=mask.block, enable_gqa=True)
        elif mask is not None and mask.chunk:
            out = chunked_attention(q, k, v, mask, self.kv_heads != heads)
        elif mask is not None and mask.causal:
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, enable_gqa=self.kv_heads != heads
            )
        else:
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=None if mask is None else mask.dense,
                enable_gqa=self.kv_heads != heads,
            )
        if in_place:
            out = out[rows]  # [R, H, S, Dh]
        return self.o_proj(out.transpose(1, 2).reshape(x.shape[0], -1))  # [B * S, H * Dh]


class SwiGLU(nn.Module):
    """Gated MLP: down(silu(gate(x)) * up(x)); ``gate_up`` is one projection, rows gate | up."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.register_load_state_dict_pre_hook(fuse_on_load(("gate", "up"), "gate_up"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            # two products with the halves of the weight: the backward of one product's
            # chunks would cat both gradients into a [N, 2 * hidden] buffer (~3 % of HAT's CPU
            # training step); without gradients one product is fewer calls per decoded byte
            gate_w, up_w = self.gate_up.weight.chunk(2, dim=0)
            return self.down(F.silu(F.linear(x, gate_w)) * F.linear(x, up_w))
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.dim, cfg.hidden_dim)

    def forward(
        self, x: torch.Tensor, ctx: LayerContext, cache: KVCache | None = None
    ) -> torch.Tensor:
        """x [B * S, D] -> [B * S, D]."""
        x = x + self.attn(self.attn_norm(x), ctx, cache)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """A stack of blocks; callers give positions (for RoPE), the attention mask and, to decode,
    a ``KVCache`` per layer with the position the new entries go to."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))

    def context(
        self,
        batch: int,
        seq: int,
        positions: torch.Tensor | int,
        mask: AttentionMask | None,
        cache_pos: int | torch.Tensor = 0,
        cache_end: int | None = None,
        cache_rows: torch.Tensor | None = None,
        cache_first: int | None = None,
    ) -> LayerContext:
        """The per-forward inputs of every layer. ``positions``: [B, S] (or [1, S]) each below
        S or a size given to ``rope.reserve``; or an int p, positions p..p+S-1 of every row.
        The ``cache_*`` arguments say where the caches write and what they return
        (``KVCache.update``)."""
        if not isinstance(positions, int):
            self.rope.reserve(seq)  # a position within a sequence is below its length
        rope = self.rope(positions, seq)
        return LayerContext(batch, rope, mask, cache_pos, cache_end, cache_rows, cache_first)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | int,
        mask: AttentionMask | None,
        caches: list[KVCache] | None = None,
        cache_pos: int | torch.Tensor = 0,
        cache_end: int | None = None,
        cache_rows: torch.Tensor | None = None,
        cache_first: int | None = None,
    ) -> torch.Tensor:
        """x [B, S, D] -> [B, S, D]."""
        batch, seq, dim = x.shape
        ctx = self.context(
            batch, seq, positions, mask, cache_pos, cache_end, cache_rows, cache_first
        )
        h = x.reshape(batch * seq, dim)
        for i, layer in enumerate(self.layers):
            h = layer(h, ctx, caches[i] if caches is not None else None)
        return h.view(batch, seq, dim)

    def make_caches(
        self, batch: int, capacity: int, *, keep: int | None = None, like: torch.Tensor
    ) -> list[KVCache]:
        """One ``KVCache`` per layer (sliding over the stack's window, if it has one)."""
        cfg = self.cfg
        return [
            KVCache(
                batch,
                cfg.kv_heads,
                cfg.head_dim,
                capacity,
                window=cfg.window,
                keep=keep,
                dtype=like.dtype,
                device=like.device,
            )
            for _ in range(cfg.n_layers)
        ]
