"""The BPE twin's engines, the model side of one ``generate()`` call: ``BPECachedEngine`` (one
KV cache per backbone layer) and its uncached reference, ``BPEUncachedEngine``."""

from __future__ import annotations

from typing import Any

import torch

from hat.generation.step import ColumnCache, window_mask
from hat.modeling import softcap


class BPECachedEngine:
    """Token-level decoding of the twin with one preallocated KV cache per backbone layer."""

    def __init__(self, model: Any, rows: list[list[int]], max_new: int) -> None:
        from hat.tokenizer import PAD_ID

        self.model, self.rows, self.pad_id = model, rows, PAD_ID
        like = next(model.parameters())
        self.device, self.batch = like.device, len(rows)
        self.width = max(len(r) for r in rows)
        self.pad = torch.tensor([self.width - len(r) for r in rows], device=self.device)
        bb = model.config.backbone
        cap = self.width + max_new
        self.caches = [
            ColumnCache(self.batch, bb.kv_heads, cap, bb.head_dim, like) for _ in range(bb.n_layers)
        ]
        self.n = self.width

    def observe(self, row: int, token: int) -> list[int]:
        return []

    def prefill(self) -> torch.Tensor:
        ids = torch.full((self.batch, self.width), self.pad_id, dtype=torch.long)
        for r, row in enumerate(self.rows):
            ids[r, self.width - len(row) :] = torch.tensor(row)
        return self._run(ids.to(self.device), 0)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.n += 1
        return self._run(tokens[:, None], self.n - 1)

    def _run(self, ids: torch.Tensor, first: int) -> torch.Tensor:
        """ids [B, S] at columns [first, first + S) -> logits of the last column [B, V]."""
        m, end = self.model, first + ids.shape[1]
        for c in self.caches:
            c.write, c.read_from = first, 0
        cols = torch.arange(first, end, device=self.device)
        mask = window_mask(cols, torch.arange(end, device=self.device), self.pad, None)
        pos = (cols[None] - self.pad[:, None]).clamp(min=0)
        hidden = m.backbone(m.embed(ids), pos, mask, self.caches)  # [B, S, D]
        return softcap(m.head(hidden[:, -1]), m.config.logit_softcap)


class BPEUncachedEngine:
    """Reference for the twin: the full forward over every (left-padded) sequence each step."""

    def __init__(self, model: Any, rows: list[list[int]], max_new: int) -> None:
        from hat.tokenizer import PAD_ID

        self.model, self.rows, self.pad_id = model, [list(r) for r in rows], PAD_ID

    def observe(self, row: int, token: int) -> list[int]:
        self.rows[row].append(token)
        return []

    def prefill(self) -> torch.Tensor:
        return self._forward()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._forward()

    def _forward(self) -> torch.Tensor:
        width = max(len(r) for r in self.rows)
        ids = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in self.rows])
        return self.model(input_ids=ids.to(self.model.device)).logits[:, -1]
