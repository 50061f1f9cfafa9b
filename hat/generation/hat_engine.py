"""HAT's engines, the model side of one ``generate()`` call: ``HATCachedEngine`` (byte-by-byte
decoding with encoder, backbone and decoder caches) and its uncached reference,
``HATUncachedEngine``."""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch

from hat.batching import collate_documents, row_groups
from hat.block import AttentionMask, reserve_positions, round_up
from hat.generation.choose import Chooser
from hat.generation.columns import (
    KEY_BLOCK,
    LeftPadding,
    blocks_in_reach,
    prefill_mask,
    window_mask,
)
from hat.generation.lean import (
    CUDA_GRAPH_MODES,
    StaticBuffers,
    StaticStep,
    graph_chooser,
    lean_view,
    step_path,
)
from hat.generation.words import WordTracker, word_starts
from hat.modeling import softcap
from hat.splitter import PAD

logger = logging.getLogger(__name__)


class HATCachedEngine:
    """Byte-by-byte HAT decoding with encoder, backbone and decoder caches.

    The model's modules do the math; this class decides what runs when: a byte is encoded,
    a word that ends is pooled and fed to the backbone (rolled back when the splitter moves an
    earlier boundary), and the decoder runs with the guide of each byte's word. Rows are
    left-padded to a shared column axis (column c of row r is byte c - pad[r] of its
    document); each row writes at its own next column, the same for all rows unless rows wait
    for the backbone (``wait`` > 1: see ``_schedule``). ``observe`` feeds the host-side word
    tracker; ``step`` runs the device work.
    """

    SLACK = 512  # extra columns per sliding buffer: they are compacted every SLACK steps
    UNIT = 64  # static shapes: buffer sizes are multiples of it, so similar calls share graphs
    WORD_UNIT = 64  # the same for the backbone's word caches (~5 bytes a word: coarser)
    LAG = 64  # with ``wait``: a row this many columns behind the lead waits for no one
    WAIT_RATIO = 16  # backbone parameters per byte-stack parameter from which waiting pays
    SHORT_WORD = 16  # bytes: the static backbone pass's window for words up to this long

    def __init__(
        self,
        model: Any,
        rows: list[list[int]],
        max_new: int,
        compile: bool | str = False,
        wait: int = 1,
        choose: Chooser | None = None,
    ) -> None:
        cfg = self.cfg = model.config
        self.model = model
        like = next(model.parameters())
        self.device, self.batch = like.device, len(rows)
        self.cols = LeftPadding([len(r) for r in rows], max_new, self.device)
        self.width, self.pad_list, self.pad = self.cols.width, self.cols.pad_list, self.cols.pad
        self.rows = rows
        self.trackers = [WordTracker(model.splitter, bytes(r)) for r in rows]
        self.margin = cfg.max_word_bytes + 8  # columns a word (+ an incomplete char) can span
        self.ring_size = self.margin + 2  # guides kept per row (ring indexed by word % size)
        total = self.width + max_new
        self.positions = total + 1  # every position (bytes and words) is below it
        reserve_positions(model, self.positions)
        mode, self.key_blocks = step_path("HAT", compile, self.device.type, self.batch)
        self.static = mode is not None  # compiled static-shape steps (None: eager)
        # rows that finished a word wait until `wait` rows wait, then one backbone pass serves
        # them all (1: the backbone runs at once); waiting rows fall behind the others
        self.wait = wait
        self.col = [self.width] * self.batch  # next column of each row
        self.waiting: dict[int, tuple[int, int, int]] = {}  # row -> its deferred event
        self.retired: set[int] = set()  # rows the caller has finished
        self.ready: list[bool] | None = None  # rows whose logits the last step gave (None: all)
        self._allocate(like, total, max_new, mode)
        self.words = [0] * self.batch  # words in the backbone cache, per row
        self.events: list[tuple[int, int, int]] = []  # (row, starts kept, first changed)
        # the static backbone pass pools words from a window of columns: short, or any word
        self.windows = [
            torch.arange(n, device=self.device)
            for n in (min(self.SHORT_WORD, cfg.max_word_bytes), cfg.max_word_bytes)
        ]
        self.all_rows = list(range(self.batch))
        self.row_index = torch.arange(self.batch, device=self.device)
        self.encoder, self.pooler, self.backbone, self.decoder = (
            lean_view(m) for m in (model.encoder, model.pooler, model.backbone, model.decoder)
        )
        self.choose = graph_chooser(choose, mode)  # the ids' choice, in the byte graph
        if self.static:  # compile_step=True: the usual step as two static-shape graphs
            self._byte_static = StaticStep(self._byte_graph, mode, self.device.type)
            self._backbone_static = StaticStep(self._backbone_graph, mode, self.device.type)

    def _allocate(self, like: torch.Tensor, total: int, max_new: int, mode: str | None) -> None:
        """The caches of the three stacks and the per-column buffers (encoder outputs, each
        column's word, the ring of guides) for ``total`` columns; under CUDA graphs the same
        buffers as the last call of the same shapes."""
        cfg = self.cfg
        enc_w, dec_w = cfg.encoder.window, cfg.decoder.window
        # the decoder may recompute the last `margin` columns, each seeing `dec_w` back
        dec_keep = dec_w + self.margin if dec_w else None
        dec_capacity = self._capacity(total, dec_keep, self.margin + 1)
        self.enc_caches = self.model.encoder.transformer.make_caches(
            self.batch, self._capacity(total, enc_w, 1), like=like
        )
        self.dec_caches = self.model.decoder.transformer.make_caches(
            self.batch, dec_capacity, keep=dec_keep, like=like
        )
        for cache in (*self.enc_caches, *self.dec_caches):
            if self.width > cache.k.shape[2]:  # a long prompt: its last columns are kept
                cache.hold_from(self.width - cache.keep)
        words = max(len(t.starts) for t in self.trackers) + max_new // 4 + 16  # grows if needed
        words = round_up(words, self.WORD_UNIT) if self.static else words
        self.bb_caches = self.model.backbone.transformer.make_caches(self.batch, words, like=like)
        # CUDA graphs write the caches at the addresses they were recorded with: the same
        # buffers serve the next call of the same shapes
        self.buffers = StaticBuffers.for_model(self.model) if mode in CUDA_GRAPH_MODES else None
        if self.buffers is not None:
            self.buffers.hold_caches("encoder", self.enc_caches)
            self.buffers.hold_caches("decoder", self.dec_caches)
            self.buffers.hold_caches("backbone", self.bb_caches)
        # encoder outputs and the word of each column: columns the decoder and pooler may read
        self.keep = dec_keep
        self.cap = max(self.width, dec_capacity)  # pooling reads prompts
        self.base = 0  # column held in slot 0
        self.enc_out = like.new_zeros(self.batch, self.cap, cfg.encoder.dim)  # [B, cap, De]
        if self.buffers is not None:  # the backbone graph pools from it
            self.enc_out = self.buffers.hold("enc_out", self.enc_out)
        self.col_word = torch.zeros(self.batch, self.cap, dtype=torch.long, device=self.device)
        self.ring = like.new_zeros(self.batch, self.ring_size, cfg.backbone.dim)  # guides
        if self.buffers is not None:  # the byte graph reads it: held, it is not copied in
            self.ring = self.buffers.hold("ring", self.ring)

    def _capacity(self, total: int, keep: int | None, writes: int) -> int:
        """Columns of a stack's buffers: all ``total`` without a window; with one, the
        ``keep`` columns in reach plus room for the most columns one step ``writes`` (static
        graphs read the whole buffer: the least that works, the same for every prompt
        length), or at least SLACK (eager steps read the window: compact rarely)."""
        if not keep:
            size = total
        else:
            # rows that wait for the backbone stand up to LAG columns behind the lead
            writes += self.LAG if self.wait > 1 else 0
            size = min(total, keep + (writes if self.static else max(writes, self.SLACK)))
        return round_up(size, self.UNIT) if self.static else size

    @classmethod
    def auto_wait(cls, model: Any, batch: int) -> int:
        """``backbone_wait="auto"``: rows wait for 3/4 of the batch where a backbone pass costs
        many byte steps, i.e. the backbone holds >= ``WAIT_RATIO`` x the byte stacks'
        parameters (the paper's presets: 53-197x; ``small`` 3x) and the batch has >= 8 rows;
        else 1. Measured on a CPU (BENCHMARKS.md): ``1b`` batch 32 (K 24) 2.0x, batch 8 (K 6)
        1.29x; ``small`` batch 32 0.91x."""
        if batch < 8:
            return 1
        backbone = sum(p.numel() for p in model.backbone.parameters())
        stacks = sum(p.numel() for m in (model.encoder, model.decoder) for p in m.parameters())
        wait = max(2, round(0.75 * batch)) if backbone >= cls.WAIT_RATIO * stacks else 1
        _announce_wait(wait, batch, round(backbone / max(stacks, 1)))
        return wait

    # ---- host side ----------------------------------------------------------------
    def observe(self, row: int, token: int) -> list[int]:
        """Feed one generated byte to the row's word tracker; return its word starts."""
        change = self.trackers[row].push(token)
        if change is not None:
            self.events.append((row, *change))
        return self.trackers[row].starts

    def retire(self, row: int) -> None:
        """The caller is done with ``row``: it waits for nothing and sets no one's pace."""
        self.retired.add(row)

    # ---- prefill ------------------------------------------------------------------
    def prefill(self) -> torch.Tensor:
        """Run the prompts ([B, P] columns) through all three stacks, by groups of rows
        (``row_groups``); logits [B, 256]."""
        ids = self.cols.left_padded(self.rows, PAD)  # [B, P]
        groups = row_groups([self.width] * self.batch, self.device)
        return torch.cat([self._prefill_rows(g, ids[g]) for g in groups])  # [B, 256]

    def _prefill_rows(self, g: slice, ids: torch.Tensor) -> torch.Tensor:
        """The prefill of rows ``g``, their prompt columns ``ids`` [G, P] -> logits [G, 256]."""
        width, pad = self.width, self.pad[g]
        enc_caches, bb_caches, dec_caches = (
            [cache.row_view(g) for cache in caches]
            for caches in (self.enc_caches, self.bb_caches, self.dec_caches)
        )
        pos = self.cols.positions(0, width - 1, g)  # [G, P]
        enc_w, dec_w = self.cfg.encoder.window, self.cfg.decoder.window
        enc_mask = prefill_mask(width, pad, enc_w)
        states = self.encoder(ids, pos, enc_mask, enc_caches)  # [G, P, De]
        self.enc_out[g, :width] = states

        guides, col_word = self._prefill_backbone(g, bb_caches)  # [G, W+1, D], [G, P]
        self.col_word[g, :width] = col_word
        dec_mask = enc_mask if dec_w == enc_w else prefill_mask(width, pad, dec_w)
        hidden = self.decoder(states, guides, col_word, pos, dec_mask, dec_caches)
        return self._logits(hidden[:, -1])

    def _prefill_backbone(self, g: slice, caches: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool every finished prompt word of rows ``g``, run them through the backbone
        (``caches``: those rows'), fill their guide rings. Returns all their guides
        [G, W+1, D] and each prompt column's word index [G, P]."""
        bb_dim, rows = self.cfg.backbone.dim, range(self.batch)[g]
        items, where = [], []
        col_word = torch.zeros(len(rows), self.width, dtype=torch.long)
        for i, r in enumerate(rows):
            t = self.trackers[r]
            ends = [*t.starts[1:], len(t.data)]
            lengths = torch.tensor([e - s for s, e in zip(t.starts, ends)])
            # column -> its word's index, one call per row (a 4 KB prompt has ~800 words)
            col_word[i, self.pad_list[r] :] = torch.arange(len(lengths)).repeat_interleave(lengths)
            items += [(r, s, e) for s, e in zip(t.starts[:-1], ends[:-1])]  # the last is open
            where += [(i, k) for k in range(len(t.starts) - 1)]
        num_list = [len(self.trackers[r].starts) - 1 for r in rows]
        num = torch.tensor(num_list, device=self.device)  # [G] finished words
        width = max(max(num_list), 1)
        x = self.ring.new_zeros(len(rows), width, bb_dim)  # [G, W, D]
        if items:
            at, ks = zip(*where)
            x[list(at), list(ks)] = self._pool(items)
        w_cols = torch.arange(width, device=self.device)
        causal = w_cols[None, :] <= w_cols[:, None]  # [W, W]
        ok = causal[None] & (w_cols[None, None, :] < num[:, None, None])  # finished words only
        mask = AttentionMask(
            dense=(ok | torch.eye(width, dtype=torch.bool, device=self.device))[:, None]
        )
        out = self.backbone(x, 0, mask, caches)  # positions 0..W-1 in every row
        self.words[g] = num_list
        guides = self.decoder.guides(out)  # [G, W+1, D]: slot k = guide of word k
        # ring slot j holds the guide of the latest word w <= num with w % size == j
        j = torch.arange(self.ring_size, device=self.device)
        w = (num[:, None] - (num[:, None] - j) % self.ring_size).clamp(min=0)  # [G, size]
        self.ring[g] = torch.gather(guides, 1, w[..., None].expand(-1, -1, bb_dim))
        return guides, col_word.to(self.device)

    # ---- one step -----------------------------------------------------------------
    def step(self, tokens: torch.Tensor, choice: tuple | None = None) -> Any:
        """Write each ready row's next byte (``tokens`` [B], after ``observe``) at its column;
        return the logits [B, 256] of every row's next column, or with ``choice`` (the
        arguments of ``self.choose`` after the logits) the chosen (bytes [B], reader states
        [B]). With ``wait`` > 1 a row whose byte finished a word may sit steps out: ``ready``
        then lists the rows whose logits are new, and a waiting row's byte is written once the
        backbone has taken its word."""
        apply, resumed = self._schedule()
        if self.wait == 1:  # every row at the same column (finished rows too)
            cols = self.col
        else:  # finished rows keep pace with the lead (their scratch is never read)
            lead = max((c for r, c in enumerate(self.col) if r not in self.retired), default=0)
            cols = [lead if r in self.retired else c for r, c in enumerate(self.col)]  # [B]
        lo, n = min(cols), max(cols)
        self._make_room(lo, n)
        first = self._apply_events(apply, cols)  # first column to (re)decode, by row
        if resumed:  # their bytes came in earlier steps
            tokens = tokens.clone()
            kept = [self.trackers[r].data[-1] for r in resumed]  # each one's newest byte
            tokens[self._tensor(resumed)] = self._tensor(kept)
        c0 = min(first.values(), default=n)
        self.col = [c if r in self.waiting else c + 1 for r, c in enumerate(cols)]
        if choice is not None and self.wait > 1:  # rows sitting this step out: PAD, state kept
            waiting = [r in self.waiting for r in self.all_rows]
            choice = (*choice, torch.tensor(waiting, device=self.device))  # [B] bool
        if self.static and lo == n and c0 == n:  # the usual step: column n, one graph
            words = self.col_word[:, n - self.base, None]  # [B, 1]
            enc, dec = self._fit(self.enc_caches, n, n + 1), self._fit(self.dec_caches, n, n + 1)
            # column; each stack's slot for it and the column in its slot 0 (0-d each)
            where = torch.tensor([n, n - enc, enc, n - dec, dec], device=self.device)
            x, out = self._byte_static(tokens, words, *where, *(choice or ()))
            self.enc_out[:, n - self.base] = x  # [B, De]
            return out  # logits, or with a choice what the graph chose
        if lo < n:
            return self._step_rows(tokens, cols, first, choice)
        self._encode(tokens, n)
        logits = self._decode(c0, n)
        return logits if choice is None else self.choose(logits, *choice)

    def _apply_events(self, apply: list[tuple[int, int, int]], cols: list[int]) -> dict[int, int]:
        """The word events ``apply`` (row, starts kept, first changed offset) before the rows
        write at ``cols``: each column's word (the new one carries the word of the byte
        before it), words relabelled after a boundary moved, and the backbone passes of the
        words now finished -> the first column each affected row's decoder must recompute."""
        finished: list[tuple[int, int, int, int]] = []
        relabel: tuple[list[int], list[int], list[int]] = ([], [], [])  # rows, slots, words
        first: dict[int, int] = {}
        for r, keep, changed in apply:
            self._assign_words(r, keep, finished, relabel)
            first[r] = self.pad_list[r] + changed
        lo, n = min(cols), max(cols)
        if lo == n:  # every row at column n (always without waiting)
            slot = n - self.base
            self.col_word[:, slot] = self.col_word[:, slot - 1]  # same word as the byte before
        else:
            slots = self._tensor(cols) - self.base
            self.col_word[self.row_index, slots] = self.col_word[self.row_index, slots - 1]
        if relabel[0]:
            rows, slots, words = (torch.tensor(v, device=self.device) for v in relabel)
            self.col_word[rows, slots] = words
        if finished:  # words that ended before the rows' columns: none needs its encoder state
            self._backbone_steps(finished)
        return first

    def _schedule(self) -> tuple[list[tuple[int, int, int]], list[int]]:
        """Take this step's word events -> (events to apply now, rows that resume). With
        ``wait`` > 1 a row whose event finished a word waits (its event deferred) until
        ``wait`` rows wait, no other row can write, or it lags ``LAG`` columns behind."""
        events, self.events = self.events, []
        if self.wait == 1:
            return events, []
        apply = []
        for event in events:
            r, keep = event[0], event[1]
            if r in self.retired:
                continue  # its caches are no longer read
            if min(self.words[r], keep - 1) < len(self.trackers[r].starts) - 1:
                self.waiting[r] = event  # it finished a word: the backbone must take it
            else:
                apply.append(event)
        resumed: list[int] = []
        if self.waiting:
            idle = self.retired | self.waiting.keys()
            moving = [r for r in range(self.batch) if r not in idle]
            lead = max((self.col[r] for r in moving), default=0)
            lags = any(lead - self.col[r] >= self.LAG for r in self.waiting)
            if len(self.waiting) >= self.wait or not moving or lags:
                apply += self.waiting.values()
                resumed = list(self.waiting)
                self.waiting.clear()
        self.ready = [r not in self.waiting for r in range(self.batch)]
        return apply, resumed

    def _step_rows(
        self,
        tokens: torch.Tensor,
        cols: list[int],
        first: dict[int, int],
        choice: tuple | None = None,
    ) -> Any:
        """Encoder and decoder of one column per row, row r's at ``cols[r]`` (rows stand at
        different columns once some have waited); rows in ``first`` then recompute their
        decoder columns from there. Logits [B, 256], or with ``choice`` what ``choose`` picks
        from them (in the graph unless a row recomputes)."""
        c = self._tensor(cols)  # [B]
        lo, end = min(cols), max(cols) + 1
        slots = c - self.base
        recompute = {r: c0 for r, c0 in first.items() if c0 < cols[r]}
        if self.static:  # the byte graph with a column per row
            words = self.col_word[self.row_index, slots][:, None]  # [B, 1]
            enc, dec = self._fit(self.enc_caches, lo, end), self._fit(self.dec_caches, lo, end)
            offsets = torch.tensor([enc, dec], device=self.device)  # columns in slot 0
            fuse = () if choice is None or recompute else choice  # recomputed rows: after
            x, logits = self._byte_static(
                tokens, words, c, c - enc, offsets[0], c - dec, offsets[1], *fuse
            )
            self.enc_out[self.row_index, slots] = x  # [B, De]
            if fuse:
                return logits  # what the graph chose
        else:
            positions = (c - self.pad)[:, None]  # [B, 1]
            enc_w, dec_w = self.cfg.encoder.window, self.cfg.decoder.window
            lo_enc, lo_dec = self.enc_caches[0].read_start(lo), self.dec_caches[0].read_start(lo)
            mask = self.cols.step_mask(c, lo_enc, end - lo_enc, enc_w)
            x = self.encoder(tokens[:, None], positions, mask, self.enc_caches, c, end, lo)
            self.enc_out[self.row_index, slots] = x[:, 0]  # [B, De]
            index = self.col_word[self.row_index, slots][:, None] % self.ring_size  # [B, 1]
            mask = self.cols.step_mask(c, lo_dec, end - lo_dec, dec_w)
            hidden = self.decoder(x, self.ring, index, positions, mask, self.dec_caches, c, end, lo)
            logits = self._logits(hidden[:, -1])
        for r, c0 in recompute.items():
            logits[r] = self._decode(c0, cols[r], slice(r, r + 1))[0]
        return logits if choice is None else self.choose(logits, *choice)

    def _encode(self, tokens: torch.Tensor, n: int) -> None:
        """Encoder on column n: its KV entries go to the caches, its output to ``enc_out``."""
        mask = self.cols.mask(n, self.enc_caches[0].read_start(n))
        x = self.encoder(tokens[:, None], self.cols.position(n), mask, self.enc_caches, n)
        self.enc_out[:, n - self.base] = x[:, 0]  # [B, De]

    def _assign_words(self, r: int, keep: int, finished: list, relabel: tuple) -> None:
        """After row r's word starts changed (the first ``keep`` survived): roll the backbone
        back to the words that are unchanged, queue the words now finished, and list the
        columns whose word changed in ``relabel`` (rows, slots, word indices)."""
        tracker, offset = self.trackers[r], self.pad_list[r] - self.base
        starts, ends = tracker.starts, [*tracker.starts[1:], len(tracker.data)]
        first_word = min(self.words[r], keep - 1)  # word k is intact iff starts[k + 1] is
        self.words[r] = first_word
        for k in range(first_word, len(starts) - 1):
            finished.append((r, starts[k], starts[k + 1], k))
        for k in range(max(keep - 1, 0), len(starts)):
            size = ends[k] - starts[k]
            relabel[0].extend([r] * size)
            relabel[1].extend(range(offset + starts[k], offset + ends[k]))
            relabel[2].extend([k] * size)

    def _backbone_steps(self, finished: list[tuple[int, int, int, int]]) -> None:
        """Pool the finished words and feed them to the backbone, one word per row per pass.
        A pass runs only the rows that have a word in it (at batch 32 a few rows finish a
        word at a given byte; running every row would do ~5x the backbone's work)."""
        # the static pass pools its words in its graph
        pooled = None if self.static else self._pool([(r, s, e) for r, s, e, _ in finished])
        passes: list[list[int]] = []  # pass j: the j-th finished word of each row
        count: dict[int, int] = {}
        for i, (r, _, _, _) in enumerate(finished):
            j = count[r] = count.get(r, -1) + 1
            if j == len(passes):
                passes.append([])
            passes[j].append(i)
        for members in passes:
            row_list = [finished[i][0] for i in members]
            assert all(self.words[r] == finished[i][3] for r, i in zip(row_list, members))
            if self.static:
                self._backbone_pass_static(row_list, [finished[i][1:3] for i in members])
            else:
                self._backbone_pass(row_list, pooled[members])  # pooled [R, D]
            for r in row_list:
                self.words[r] += 1

    def _backbone_pass(self, row_list: list[int], x: torch.Tensor) -> None:
        """One eager backbone pass of the rows ``row_list`` with their pooled words x [R, D],
        each written at its row's next word slot; their guides go to the ring."""
        slot_list = [self.words[r] for r in row_list]  # where each row writes
        read_to = max(slot_list) + 1
        if row_list == self.all_rows and min(slot_list) + 1 == read_to:
            # every row adds its word at the same position (always at batch 1): no mask
            out = self.backbone(x[:, None], read_to - 1, None, self.bb_caches, read_to - 1)
            self.ring[:, read_to % self.ring_size] = self.decoder.guide_norm(out[:, 0])
            return
        rows, slots = self._tensor(row_list), self._tensor(slot_list)  # [R], [R]
        mask = word_mask(slots, read_to)
        cache_rows = None if row_list == self.all_rows else rows
        out = self.backbone(
            x[:, None], slots[:, None], mask, self.bb_caches, slots, read_to, cache_rows
        )  # [R, 1, D]
        self._store_guides(row_list, self.decoder.guide_norm(out[:, 0]))

    def _decode(self, c0: int, n: int, g: slice = slice(None)) -> torch.Tensor:
        """Decoder over columns [c0, n] of rows ``g`` (default all; unchanged rows recompute
        the same values) -> logits [G, 256] of column n."""
        base = self.base
        if c0 < base:
            raise RuntimeError(f"column {c0} was dropped from the buffers (base {base})")
        caches = self.dec_caches if g == slice(None) else [c.row_view(g) for c in self.dec_caches]
        lo = caches[0].read_start(c0)
        current = {len(t.starts) - 1 for t in self.trackers[g]}  # word of column n, per row
        if c0 == n and len(current) == 1:  # one column, all rows in the same word: a view
            guides, index = self.ring[g, current.pop() % self.ring_size, None], None  # [G, 1, D]
        else:
            guides = self.ring[g]
            index = self.col_word[g, c0 - base : n + 1 - base] % self.ring_size
        if c0 == n and g == slice(None):  # the usual case: one new column
            mask, positions = self.cols.mask(n, lo), self.cols.position(n)
        else:
            cols = torch.arange(c0, n + 1, device=self.device)
            keys = torch.arange(lo, n + 1, device=self.device)
            mask = window_mask(cols, keys, self.pad[g], self.cfg.decoder.window)
            positions = self.cols.positions(c0, n, g)
        states = self.enc_out[g, c0 - base : n + 1 - base]  # [G, Q, De]
        hidden = self.decoder(states, guides, index, positions, mask, caches, c0)
        return self._logits(hidden[:, -1])  # only the last column is predicted

    # ---- the static-shape step (compile_step=True) ---------------------------------
    # Two graphs of the modules whose inputs keep their shapes as the caches fill: one per
    # byte (encoder and decoder of the new column), one per word (backbone). Caches are read
    # whole (every slot) under a mask of the columns a query may see, and the column, slot
    # and positions are tensors. Compiled once; the eager path above is the reference (and
    # runs the columns recomputed after a word boundary moved).
    @staticmethod
    def _fit(caches: list, lo: int, end: int) -> int:
        """Make room for columns [lo, end) in a stack's caches (its layers slide together)
        -> the column held in slot 0."""
        for cache in caches:
            cache.fit(lo, end)
        return caches[0].offset

    def _byte_graph(self, tokens, words, n, enc_slot, enc_offset, dec_slot, dec_offset, *choice):  # noqa: ANN001, ANN002, ANN202
        x = self._encode_graph(tokens, n, enc_slot, enc_offset)  # [B, De]
        logits = self._decode_graph(x[:, None], words, n, dec_slot, dec_offset)  # [B, 256]
        return x, (self.choose(logits, *choice) if choice else logits)

    def _encode_graph(self, tokens, n, slot, offset):  # noqa: ANN001, ANN202
        caches, window = self.enc_caches, self.cfg.encoder.window
        # tokens [B] -> encoder state of column n [B, De]
        mask, positions = self.cols.static_step(n, offset, caches, window, self.key_blocks)
        x = self.model.encoder(tokens[:, None], positions, mask, caches, slot)
        return x[:, 0]

    def _decode_graph(self, states, words, n, slot, offset):  # noqa: ANN001, ANN202
        caches, window = self.dec_caches, self.cfg.decoder.window
        # states [B, 1, De], words [B, 1] -> logits [B, 256]
        mask, positions = self.cols.static_step(n, offset, caches, window, self.key_blocks)
        index = words % self.ring_size  # each row's guide in the ring
        hidden = self.model.decoder(states, self.ring, index, positions, mask, caches, slot)
        return self._logits(hidden[:, -1])

    def _backbone_pass_static(self, row_list: list[int], spans: list[tuple[int, int]]) -> None:
        """One backbone pass of the rows ``row_list`` (their words: (start, end) document
        offsets ``spans``) as a static graph, which also pools the words. The rows run in a
        group of a few fixed sizes (ceil(B/8) doubled until it reaches B, then B itself: at
        most four sizes), topped up with rows that have no word: those write scratch at their
        next slot, hidden from their queries until their next word overwrites it."""
        size = -(-self.batch // 8)  # ceil(B / 8)
        while size < len(row_list):
            size *= 2
        if size >= self.batch:  # every row, in row order: the caches' rows need no gather
            group, rows = self.all_rows, None
        else:
            taken = set(row_list)
            group = row_list + [r for r in self.all_rows if r not in taken][: size - len(row_list)]
            rows = self._tensor(group)
        place = {r: i for i, r in enumerate(group)}
        at = self._tensor([place[r] for r in row_list])  # where row_list's rows are in the group
        # each group row's word: the slot of its last column, its length, its last byte's
        # position (rows without a word: an empty word after a scratch window ending at slot
        # 0; their guides are dropped)
        geometry = [[0] * len(group) for _ in range(3)]
        for r, (start, end) in zip(row_list, spans):
            i = place[r]
            geometry[0][i] = self.pad_list[r] + end - 1 - self.base
            geometry[1][i], geometry[2][i] = end - start, end - 1
        capacity = self.bb_caches[0].k.shape[2]
        for cache in self.bb_caches:
            cache.fit(0, max(self.words) + 1)
        if self.bb_caches[0].k.shape[2] != capacity:  # the caches grew: new graphs
            self._backbone_static.reshaped()
            if self.buffers is not None:  # new buffers, holding the old ones' words
                self.buffers.hold_caches("backbone", self.bb_caches, reuse=False)
        slots = [self.words[r] for r in group]
        # the window the graph pools from: SHORT_WORD columns unless a word is longer (two
        # graphs per group size; most words are short)
        longest = max(end - start for start, end in spans)
        assert longest <= self.cfg.max_word_bytes, "a finished word is longer than the cap"
        window = self.windows[0 if longest <= self.SHORT_WORD else 1]
        # every cache row's slot (-1: not in the group) for a mask over all of them: a group
        # of some rows reads the caches in place
        everyone = [-1] * self.batch
        for r, slot in zip(group, slots):
            everyone[r] = slot
        guide = self._backbone_static(
            self._tensor([*geometry, slots]), window, rows, self._tensor(everyone)
        )
        self._store_guides(row_list, guide[at])

    def _store_guides(self, row_list: list[int], guides: torch.Tensor) -> None:
        """The guides [R, D] that the backbone just gave ``row_list``'s rows (each for the word
        after its word ``self.words[r]``) into their ring slots."""
        ring_slots = self._tensor([(self.words[r] + 1) % self.ring_size for r in row_list])
        self.ring[self._tensor(row_list), ring_slots] = guides

    def _backbone_graph(self, geometry, window, rows, everyone):  # noqa: ANN001, ANN202
        # geometry [4, R]: each row's word (last column's slot, length, last byte's position)
        # and backbone slot; window: arange(L), the columns pooled from; rows [R] (None: all)
        # and everyone [B]: every cache row's slot (-1: not in the group)
        ends, lengths, end_pos, slots = geometry
        pooled = self._pool_window(ends, lengths, end_pos, window, rows)  # [R, D]
        caches = self.bb_caches
        # the group's queries over every row's cache, in place (no copies of its rows)
        mask = word_mask(everyone, caches[0].k.shape[2], self.key_blocks, every_row=True)
        out = self.model.backbone(pooled[:, None], slots[:, None], mask, caches, slots, None, rows)
        return self.model.decoder.guide_norm(out[:, 0])  # [R, D]: guides of the next words

    def _pool_window(self, ends, lengths, end_pos, j, rows):  # noqa: ANN001, ANN202
        """The words of rows [R] (None: all) pooled from the L columns (``j`` = arange(L))
        that end at slot ``ends`` [R]: in each row's window a scratch word (the columns before
        its word) and its word (the last ``lengths`` [R] columns; last byte at document
        position ``end_pos`` [R]), pooled as the model pools any words -> [R, D]."""
        size, count = j.shape[0], ends.shape[0]
        cols = (ends[:, None] - (size - 1) + j).clamp(min=0)  # [R, L]
        row = (self.row_index if rows is None else rows)[:, None]  # [R, 1]
        states = self.enc_out[row, cols].flatten(0, 1)  # [R * L, De]
        positions = (end_pos[:, None] - (size - 1) + j).clamp(min=0).flatten()  # [R * L]
        firsts = torch.arange(count, device=ends.device) * size
        offsets = torch.stack([firsts, firsts + size - lengths], 1).flatten()  # [2R]
        offsets = torch.cat([offsets, offsets.new_full((1,), count * size)])
        word_end = end_pos.repeat_interleave(2)  # (scratch words: any position)
        pooled = self.model.pooler(states, positions, offsets, word_end, max_pos=self.positions)
        return pooled[1::2]  # [R, D]: the words, not the scratch

    # ---- helpers ------------------------------------------------------------------
    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def _pool(self, items: list[tuple[int, int, int]]) -> torch.Tensor:
        """Pool words given as (row, start, end) document offsets from cached encoder
        outputs -> [N, D]."""
        if len(items) == 1:  # the usual step: one word of one row, all views
            r, s, e = items[0]
            c = self.pad_list[r] + s - self.base
            offsets = torch.tensor([0, e - s], device=self.device)
            return self.pooler(self.enc_out[r, c : c + e - s], s, offsets, e - 1)
        rows, slots, pos, offsets, ends = [], [], [], [0], []
        for r, s, e in items:
            c = self.pad_list[r] + s - self.base
            rows += [r] * (e - s)
            slots += range(c, c + e - s)
            pos += range(s, e)
            offsets.append(offsets[-1] + e - s)
            ends.append(e - 1)

        t = self._tensor
        states = self.enc_out[t(rows), t(slots)]  # [N_bytes, De]
        return self.pooler(states, t(pos), t(offsets), t(ends))

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return softcap(self.decoder.head(hidden), self.cfg.logit_softcap)

    def _make_room(self, lo: int, n: int) -> None:
        """Slide the column buffers when column n would not fit (keeps ``keep`` columns
        before column lo, the first any row writes)."""
        if n - self.base < self.cap:
            return
        shift = lo - self.keep - self.base
        for t in (self.enc_out, self.col_word):
            t[:, : self.cap - shift] = t[:, shift:].clone()
        self.base += shift


@functools.cache
def _announce_wait(wait: int, batch: int, ratio: int) -> None:
    logger.info(
        "HAT cached generation, batch %d: backbone_wait=auto -> %d (the backbone holds %dx the "
        "byte stacks' parameters; set backbone_wait=1 to run it for each row at once)",
        batch,
        wait,
        ratio,
    )


def word_mask(
    slots: torch.Tensor, keys: int, blocks: bool = False, every_row: bool = False
) -> AttentionMask:
    """[R, 1, 1, keys] mask of one backbone query per row, at word slot ``slots`` [R]: it sees
    that row's words up to its own (slots past it hold nothing yet, or scratch; a slot of -1
    sees none). With ``blocks`` (and ``keys`` whole blocks) a BlockMask of the blocks in reach
    (``columns.blocks_in_reach``). ``every_row``: ``slots`` are those of every cache row,
    the step's queries those of some (``AttentionMask.every_row``)."""
    cols = torch.arange(keys, device=slots.device)
    ok = cols[None] <= slots[:, None]  # [R, keys]
    if blocks and keys % KEY_BLOCK == 0:

        def mask_mod(b, h, q, k):  # noqa: ANN001, ANN202 - flex attention's signature
            return k <= slots[b]

        return AttentionMask(block=blocks_in_reach(ok, mask_mod), every_row=every_row)
    return AttentionMask(dense=ok[:, None, None], every_row=every_row)


class HATUncachedEngine:
    """The reference: every step re-splits each document (``word_starts``) and runs the full
    model (``collate_documents`` + forward) on everything so far."""

    def __init__(self, model: Any, rows: list[list[int]], max_new: int) -> None:
        self.model = model
        self.data = [bytearray(r) for r in rows]
        self.starts = [word_starts(bytes(d), model.splitter) for d in self.data]

    def observe(self, row: int, token: int) -> list[int]:
        self.data[row].append(token)
        self.starts[row] = word_starts(bytes(self.data[row]), self.model.splitter)
        return self.starts[row]

    def prefill(self) -> torch.Tensor:
        return self._forward()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._forward()

    def _forward(self) -> torch.Tensor:
        docs = []
        for data, starts in zip(self.data, self.starts):
            ends = [*starts[1:], len(data)]
            docs.append([bytes(data[s:e]) for s, e in zip(starts, ends)])
        batch = collate_documents(docs)
        device = self.model.device
        logits = self.model(
            input_ids=batch["input_ids"].to(device), word_lengths=batch["word_lengths"].to(device)
        ).logits  # [B, T, 256]
        last = torch.tensor([len(d) - 1 for d in self.data], device=device)
        return logits[torch.arange(len(self.data), device=device), last]
