"""The BPE twin's engines, the model side of one ``generate()`` call: ``BPECachedEngine`` (one
KV cache per backbone layer) and its uncached reference, ``BPEUncachedEngine``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from hat.generation.step import (
    ColumnCache,
    LeftPadding,
    RopeTable,
    rms,
    step_layers,
    window_mask,
)
from hat.modeling import softcap


class BPECachedEngine:
    """Token-level decoding of the twin with one preallocated KV cache per backbone layer.

    Engineered as ``HATCachedEngine`` (every speed claim is measured against the twin): the
    prefill runs the modules, each step the single-step path of step.py (``StepLayer``). Rows
    are left-padded to a shared column axis (column c of row r is token c - pad[r]).
    """

    def __init__(self, model: Any, rows: list[list[int]], max_new: int) -> None:
        from hat.tokenizer import PAD_ID

        self.model, self.rows, self.pad_id = model, rows, PAD_ID
        like = next(model.parameters())
        self.device, self.batch = like.device, len(rows)
        self.cols = LeftPadding([len(r) for r in rows], max_new, self.device)
        bb, total = model.config.backbone, self.cols.width + max_new
        self.caches = [
            ColumnCache(self.batch, bb.kv_heads, total, bb.head_dim, like)
            for _ in range(bb.n_layers)
        ]
        self.layers = step_layers(model.backbone.transformer)
        self.rope = RopeTable(total + 1, bb.head_dim, bb.rope_theta, self.device)
        self.n = self.cols.width  # next column

    def observe(self, row: int, token: int) -> list[int]:
        return []

    def prefill(self) -> torch.Tensor:
        """Run the prompts ([B, P] columns) through the backbone; logits [B, V]."""
        m, width, pad = self.model, self.cols.width, self.cols.pad
        ids = torch.full((self.batch, width), self.pad_id, dtype=torch.long)
        for r, row in enumerate(self.rows):
            ids[r, width - len(row) :] = torch.tensor(row)
        cols = torch.arange(width, device=self.device)
        mask = window_mask(cols, cols, pad, None)  # the twin's backbone has no window
        pos = (cols[None] - pad[:, None]).clamp(min=0)
        hidden = m.backbone(m.embed(ids.to(self.device)), pos, mask, self.caches)  # [B, P, D]
        return self._logits(hidden[:, -1])

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append ``tokens`` [B] at column n; return the logits [B, V] for column n + 1."""
        n = self.n
        for c in self.caches:
            c.write = n  # read_from stays 0: no window
        mask, angles = self.cols.mask(n, 0), self.cols.angles(self.rope, n)
        x = F.embedding(tokens, self.model.embed.weight)  # [B, D]
        for layer, cache in zip(self.layers, self.caches):
            x = layer(x, self.batch, angles, mask, cache)
        self.n = n + 1
        return self._logits(rms(self.model.backbone.norm, x))

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return softcap(self.model.head(hidden), self.model.config.logit_softcap)


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
