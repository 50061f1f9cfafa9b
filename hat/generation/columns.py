"""Rows of a batch on one column axis: prompts are left-padded so that every row's next
position is the same column. ``LeftPadding`` gives a column its RoPE positions and its
attention mask; ``window_mask`` the mask of several columns. Shared by both models' cached
engines."""

from __future__ import annotations

import torch

from hat.block import AttentionMask


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

    def static_mask(
        self, n: torch.Tensor, offset: torch.Tensor | int, capacity: int, window: int | None
    ) -> AttentionMask:
        """Mask [B, 1, 1, capacity] of the query at column ``n`` (a 0-d tensor) over all slots
        of a cache whose slot j holds column ``offset`` + j: causal, within the window, not
        left padding. The same shapes at every step (``generate(compile_step=True)``)."""
        cols = offset + torch.arange(capacity, device=self.pad.device)  # [K]
        ok = (cols <= n) & (cols[None] >= self.pad[:, None])  # [B, K]
        if window is not None:
            ok = ok & (cols > n - window)
        return AttentionMask(dense=ok[:, None, None])

    def row_mask(self, cols: torch.Tensor, lo: int, end: int, window: int | None) -> AttentionMask:
        """Mask [B, 1, 1, K] of one query per row, row r's at column ``cols[r]``, over keys
        [lo, end): causal, within the window, not left padding (rows at different columns:
        HAT's rows that wait for the backbone fall behind the others)."""
        keys = torch.arange(lo, end, device=self.pad.device)  # [K]
        col = cols[:, None]  # [B, 1]
        ok = (keys[None] <= col) & (keys[None] >= self.pad[:, None])  # [B, K]
        if window is not None:
            ok = ok & (keys[None] > col - window)
        return AttentionMask(dense=ok[:, None, None])

    def mask(self, n: int, lo: int) -> AttentionMask | None:
        """Mask [B, 1, 1, K] of the query at column n over keys [lo, n]: the caller keeps them
        causal and in the window, so only left padding (keys before a row's start) can need
        hiding; None when none is in reach. Column n itself is never padding."""
        return None if lo >= self.pad_max else AttentionMask(dense=self.key_ok[..., lo : n + 1])
