"""Rows of a batch on one column axis: prompts are left-padded so that every row's next
position is the same column. ``LeftPadding`` gives a column its RoPE positions and its
attention mask; ``window_mask`` the mask of several columns. Shared by both models' cached
engines."""

from __future__ import annotations

from typing import Any

import torch

from hat.block import AttentionMask


def _sees(
    key: torch.Tensor, query: torch.Tensor, start: torch.Tensor, window: int | None
) -> torch.Tensor:
    """Whether a query at column ``query`` sees the key at column ``key`` (any broadcastable
    shapes): not in the future, within the window, not before its row's document ``start``."""
    ok = (key <= query) & (key >= start)
    return ok & (key > query - window) if window is not None else ok


def window_mask(
    q_cols: torch.Tensor, k_cols: torch.Tensor, doc_start: torch.Tensor, window: int | None
) -> AttentionMask:
    """[B, 1, Q, K] causal (sliding-window) mask over absolute columns; keys before a row's
    document start (left padding) are hidden. Every query sees itself, so padding rows never
    give NaN."""
    ok = _sees(k_cols[None, None, :], q_cols[None, :, None], doc_start[:, None, None], window)
    itself = q_cols[:, None] == k_cols[None, :]  # [Q, K]
    return AttentionMask(dense=(ok | itself[None])[:, None])  # [B, 1, Q, K]


def prefill_mask(width: int, doc_start: torch.Tensor, window: int | None) -> AttentionMask:
    """The mask of a prefill over prompt columns [0, width), what ``window_mask(cols, cols,
    doc_start, window)`` lets through for every prompt query, with the left padding as a
    document of its own. Built by ``AttentionMask.packed``, so a prompt much longer than the
    window runs chunked sliding-window attention (SDPA) instead of a dense [width, width] mask
    (a 4 KB prompt: every query over 4 KB of keys for a window of 256), and prompts without
    left padding (batch 1, equal lengths) SDPA's own causal mask."""
    cols = torch.arange(width, device=doc_start.device)
    prompt = cols[None, :] >= doc_start[:, None]  # [B, P]: the left padding is False
    return AttentionMask.packed(prompt.long(), window, impl="sdpa", padding=~prompt)


KEY_BLOCK = 64  # keys per block of a step's BlockMask (static caches: multiples of 64 slots)


def blocks_in_reach(ok: torch.Tensor, mask_mod: Any) -> object:
    """A flex-attention BlockMask for one query per row that may see the keys ``ok`` [B, K]
    (K a multiple of ``KEY_BLOCK``; ``mask_mod`` the same rule as a function of indices),
    listing only the blocks holding a visible key, so that attention reads those alone. A
    static step reads a cache whole (the same shapes at every step) although only the slots
    written so far, within the window, are visible; SDPA under a dense mask reads every slot,
    which at batch 32 is memory-bound on the keys and values (BENCHMARKS.md)."""
    from torch.nn.attention.flex_attention import BlockMask

    batch, count = ok.shape
    visible = ok.view(batch, count // KEY_BLOCK, KEY_BLOCK).any(-1)  # [B, NB]
    num = visible.sum(-1, dtype=torch.int32)[:, None, None]  # [B, 1, 1] (one head group)
    # the visible blocks first, in order (a stable sort of "hidden")
    order = torch.sort((~visible).to(torch.int8), dim=-1, stable=True).indices
    indices = order.to(torch.int32)[:, None, None]  # [B, 1, 1, NB]
    return BlockMask.from_kv_blocks(
        num, indices, BLOCK_SIZE=(1, KEY_BLOCK), mask_mod=mask_mod, seq_lengths=(1, count)
    )


class LeftPadding:
    """Prompts left-padded to one column axis: column c of row r is position c - pad[r].

    Gives a one-column step (column n, past every prompt) its positions and its mask, with
    views and ints rather than new tensors where it can: steps are op-bound."""

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

    def left_padded(self, rows: list[list[int]], fill: int) -> torch.Tensor:
        """The prompts ``rows`` as one [B, width] tensor on the device: each right-aligned,
        after ``fill``."""
        ids = torch.full((len(rows), self.width), fill, dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, self.pad_list[r] :] = torch.tensor(row, dtype=torch.long)
        return ids.to(self.pad.device)

    def position(self, n: int) -> torch.Tensor | int:
        """Positions of column n (past every prompt): [B, 1], or an int shared by all rows."""
        return n - self.pad_list[0] if self.same else self.neg_pad + n

    def positions(self, first: int, last: int, rows: slice = slice(None)) -> torch.Tensor | int:
        """Positions of columns [first, last] (padding columns at 0) of ``rows``: [R, Q], or
        the int position of ``first`` shared by all rows."""
        if self.same:
            return first - self.pad_list[0]
        cols = torch.arange(first, last + 1, device=self.pad.device)
        return (cols[None] - self.pad[rows, None]).clamp(min=0)

    def step_mask(
        self,
        n: torch.Tensor,
        first: torch.Tensor | int,
        count: int,
        window: int | None,
        blocks: bool = False,
    ) -> AttentionMask:
        """Mask [B, 1, 1, count] of one query per row, at column ``n`` (a 0-d tensor: every
        row's; [B]: each row's own, as when HAT's rows that waited for the backbone stand
        behind the others) over the keys at columns ``first`` .. ``first + count - 1``:
        causal, within the window, not left padding. Static-shape steps
        (``generate(compile_step=True)``) read every slot of a cache, ``first`` the column in
        slot 0: the same shapes at every step. With ``blocks`` (and ``count`` a multiple of
        ``KEY_BLOCK``) the mask is a flex-attention BlockMask that lists only the blocks of
        keys holding a visible one (``blocks_in_reach``)."""
        keys = first + torch.arange(count, device=self.pad.device)  # [K]
        ok = _sees(keys[None], n.reshape(-1, 1), self.pad[:, None], window)  # [B, K]
        if not (blocks and count % KEY_BLOCK == 0):
            return AttentionMask(dense=ok[:, None, None])
        # the same rule by indices, of the step's inputs alone (inductor's CPU flex kernel
        # cannot read a tensor the graph computed, such as ``ok``)
        pad, query = self.pad, n.reshape(-1)  # [B], [1] or [B]
        per_row = query.shape[0] > 1

        def mask_mod(b, h, q, k):  # noqa: ANN001, ANN202 - flex attention's signature
            return _sees(first + k, query[b] if per_row else query[0], pad[b], window)

        return AttentionMask(block=blocks_in_reach(ok, mask_mod))

    def static_step(
        self,
        n: torch.Tensor,
        first: torch.Tensor | int,
        caches: list,
        window: int | None,
        blocks: bool,
    ) -> tuple[AttentionMask, torch.Tensor]:
        """What a static-shape step of column ``n`` (0-d or [B]) needs for one stack: the
        ``step_mask`` over every slot of its ``caches`` (column ``first`` in slot 0) and the
        rows' positions [B, 1]."""
        mask = self.step_mask(n, first, caches[0].k.shape[2], window, blocks)
        return mask, n.reshape(-1, 1) - self.pad[:, None]

    def mask(self, n: int, lo: int) -> AttentionMask | None:
        """Mask [B, 1, 1, K] of the query at column n over keys [lo, n]: the caller keeps them
        causal and in the window, so only left padding (keys before a row's start) can need
        hiding; None when none is in reach. Column n itself is never padding."""
        return None if lo >= self.pad_max else AttentionMask(dense=self.key_ok[..., lo : n + 1])
