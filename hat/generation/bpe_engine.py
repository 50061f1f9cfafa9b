"""The BPE twin's engines, the model side of one ``generate()`` call: ``BPECachedEngine`` (one
KV cache per backbone layer) and its uncached reference, ``BPEUncachedEngine``."""

from __future__ import annotations

from typing import Any

import torch

from hat.batching import row_groups
from hat.block import reserve_positions, round_up
from hat.generation.choose import Chooser
from hat.generation.columns import LeftPadding, prefill_mask
from hat.generation.lean import (
    CUDA_GRAPH_MODES,
    StaticBuffers,
    StaticStep,
    graph_chooser,
    lean_view,
    step_path,
)
from hat.modeling import softcap


class BPECachedEngine:
    """Token-level decoding of the twin with one preallocated KV cache per backbone layer.

    Engineered as ``HATCachedEngine`` (every speed claim is measured against the twin): the
    same modules serve the prefill and each step. Rows are left-padded to a shared column axis
    (column c of row r is token c - pad[r]).
    """

    UNIT = 64  # static shapes: the caches' size is a multiple of it (~HAT's 256 bytes), so
    # that calls of similar lengths share a graph

    def __init__(
        self,
        model: Any,
        rows: list[list[int]],
        max_new: int,
        compile: bool | str = False,
        choose: Chooser | None = None,
    ) -> None:
        from hat.tokenizer import PAD_ID

        self.model, self.rows, self.pad_id = model, rows, PAD_ID
        like = next(model.parameters())
        self.device, self.batch = like.device, len(rows)
        self.cols = LeftPadding([len(r) for r in rows], max_new, self.device)
        total = self.cols.width + max_new
        reserve_positions(model.backbone, total + 1)
        mode, self.key_blocks = step_path("BPE twin", compile, self.device.type, self.batch)
        self.static = mode is not None  # a compiled static-shape step (None: eager)
        capacity = round_up(total, self.UNIT) if self.static else total
        self.caches = model.backbone.transformer.make_caches(self.batch, capacity, like=like)
        self.choose = graph_chooser(choose, mode)  # the ids' choice, in the step's graph
        if mode in CUDA_GRAPH_MODES:  # the graphs write the caches at recorded addresses
            StaticBuffers.for_model(model).hold_caches("backbone", self.caches)
        self.n = self.cols.width  # next column
        self.embed, self.backbone, self.head = (
            lean_view(m) for m in (model.embed, model.backbone, model.head)
        )
        if self.static:  # compile_step=True: the step as a static-shape graph
            self._step_static = StaticStep(
                self._step_graph, mode, self.device.type
            )  # its caches never grow

    def observe(self, row: int, token: int) -> list[int]:
        return []

    def prefill(self) -> torch.Tensor:
        """Run the prompts ([B, P] columns) through the backbone, by groups of rows
        (``row_groups``); logits [B, V]."""
        width = self.cols.width
        ids = self.cols.left_padded(self.rows, self.pad_id)  # [B, P]
        logits = []
        for g in row_groups([width] * self.batch, self.device):
            mask = prefill_mask(width, self.cols.pad[g], None)  # the twin's backbone: no window
            pos = self.cols.positions(0, width - 1, g)
            caches = [cache.row_view(g) for cache in self.caches]
            hidden = self.backbone(self.embed(ids[g]), pos, mask, caches)  # [G, P, D]
            logits.append(self._logits(hidden[:, -1]))
        return torch.cat(logits)  # [B, V]

    def step(self, tokens: torch.Tensor, choice: tuple | None = None) -> Any:
        """Append ``tokens`` [B] at column n; return the logits [B, V] for column n + 1, or
        with ``choice`` (the arguments of ``self.choose`` after the logits; compiled steps
        only) the chosen (ids [B], reader states [B])."""
        n = self.n
        self.n = n + 1
        if self.static:  # the caches hold every column (no window): slot == column
            column = torch.tensor(n, device=self.device)
            return self._step_static(tokens, column, *(choice or ()))
        x = self.embed(tokens[:, None])  # [B, 1, D]
        mask, positions = self.cols.mask(n, 0), self.cols.position(n)
        hidden = self.backbone(x, positions, mask, self.caches, n)
        return self._logits(hidden[:, 0])

    def _step_graph(self, tokens, n, *choice):  # noqa: ANN001, ANN002, ANN202
        """The step with static shapes: the caches read whole under a mask of the columns
        each row may see; column n is written at slot n (the caches never slide)."""
        mask, positions = self.cols.static_step(n, 0, self.caches, None, self.key_blocks)
        x = self.model.embed(tokens[:, None])  # [B, 1, D]
        hidden = self.model.backbone(x, positions, mask, self.caches, n)
        logits = self._logits(hidden[:, 0])  # [B, V]
        return self.choose(logits, *choice) if choice else logits

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return softcap(self.head(hidden), self.model.config.logit_softcap)


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
