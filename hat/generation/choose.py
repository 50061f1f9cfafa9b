"""How ``generate`` picks each row's next id from the logits (``Chooser``): the valid-UTF-8
constraint with the budget and ``min_new_tokens``, the sampling warpers, argmax or a sample,
the UTF-8 reader's advance. All of it is tensor math whose shapes do not change from step to
step, so a compiled engine step runs it inside its graph (``generate(compile_step=True)``
without processors that read the history or per-step scores and logits: "fused"): per step the host then receives the ids
it needs for its word tracking and nothing else: on a GPU the graph replay holds the 5
kernels of a greedy choice (13 sampling with temperature and top-k) that would otherwise be
launched one by one after it."""

from __future__ import annotations

from collections.abc import Callable

import torch

from hat.generation.processors import LogitsProcessorList
from hat.generation.utf8 import VocabAutomaton


class Chooser:
    """Picks the next ids of a batch: ``choose`` under limits its caller works out (the
    generic loop, which also runs the processors that read the history), ``__call__`` the
    same as one function of tensors (what a fused step runs); ``constrain``, ``warp``,
    ``pick`` and ``advance`` are the parts of both.

    Sampling is the exponential race: row r takes argmax_i (scores_ri - log E_ri), E_ri drawn
    i.i.d. from Exp(1) (``noise``, drawn outside any graph with the call's generator, so a
    seed reproduces the text whether or not the choice is fused): the id i wins with
    probability softmax(scores_r)_i, as ``torch.multinomial`` would draw it."""

    def __init__(
        self,
        automaton: VocabAutomaton,
        warpers: LogitsProcessorList,
        do_sample: bool,
        min_new: int,
        pad_id: int,
    ) -> None:
        """``automaton``: the ids allowed per UTF-8 state, and which ids end a document."""
        self.automaton, self.warpers = automaton, warpers
        self.do_sample, self.min_new, self.pad_id = do_sample, min_new, pad_id

    def noise(
        self, batch: int, vocab: int, device: torch.device, generator: torch.Generator | None
    ) -> torch.Tensor | None:
        """The exponential draws of one sampling step [B, V] (None when greedy)."""
        if not self.do_sample:
            return None
        return torch.empty(batch, vocab, device=device).exponential_(generator=generator)

    def constrain(
        self,
        logits: torch.Tensor,
        state: torch.Tensor,
        left: torch.Tensor | None = None,
        early: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """logits [B, V] -> float scores with the refused ids at -inf: ids that break UTF-8
        from each row's reader ``state`` [B], characters that ``left`` [B] ids cannot finish
        (None: no budget is that tight), end ids in rows that are ``early`` [B] (under
        ``min_new_tokens``; None: none is)."""
        scores = self.automaton.mask(logits.float(), state, left)
        if early is not None:
            scores = scores.masked_fill(early[:, None] & self.automaton.is_end, -float("inf"))
        return scores

    def warp(self, scores: torch.Tensor) -> torch.Tensor:
        """Temperature, top-k, top-p (transformers' warpers; they do not read the history)."""
        for warper in self.warpers:
            scores = warper(None, scores)
        return scores

    def pick(self, scores: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """scores [B, V] -> ids [B]: argmax, or the exponential race with ``noise`` [B, V]."""
        if noise is None:
            return scores.argmax(dim=-1)
        # a draw of exactly 0 would give +inf, and -inf + inf = nan for a refused id
        return (scores - noise.clamp(min=1e-30).log()).argmax(dim=-1)

    def advance(
        self, state: torch.Tensor, tokens: torch.Tensor, frozen: torch.Tensor | None
    ) -> torch.Tensor:
        """Each row's reader state after its id; ``frozen`` [B] rows keep theirs."""
        advanced = self.automaton.advance(state, tokens)
        return advanced if frozen is None else torch.where(frozen, state, advanced)

    def choose(
        self,
        logits: torch.Tensor,
        state: torch.Tensor,
        left: torch.Tensor | None,
        early: torch.Tensor | None,
        idle: torch.Tensor | None,
        noise: torch.Tensor | None,
        process: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The choice under limits the caller worked out: ``left`` and ``early`` as for
        ``constrain``, ``idle`` [B] rows (finished, or waiting for HAT's backbone; None: no
        row) get PAD and keep their reader state; ``process`` (scores -> scores: the
        processors that read the history) runs between the constraint and the warpers ->
        (ids [B], reader states [B], the scores [B, V] the ids were picked from)."""
        scores = self.constrain(logits, state, left, early)
        if process is not None:
            scores = process(scores)
        scores = self.warp(scores)
        tokens = self.pick(scores, noise)
        if idle is not None:
            tokens = torch.where(idle, self.pad_id, tokens)
        return tokens, self.advance(state, tokens, idle), scores

    def __call__(
        self,
        logits: torch.Tensor,
        state: torch.Tensor,
        step: torch.Tensor,
        budgets: torch.Tensor,
        done: torch.Tensor,
        noise: torch.Tensor | None,
        waiting: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole choice as a function of tensors (what a fused step runs), every row at
        new id ``step`` (0-d, or [B]: each row's count), with ``budgets`` [B] ids allowed and
        ``done`` [B] rows finished -> (ids [B], states [B]). Finished rows, and rows
        ``waiting`` [B] for HAT's backbone (their logits are not new), get PAD and keep their
        state."""
        left = (budgets - step).clamp(min=1)  # a done row's budget may be spent: any id
        early = (step < self.min_new).expand(done.shape)
        idle = done if waiting is None else done | waiting
        tokens, state, _ = self.choose(logits, state, left, early, idle, noise)
        return tokens, state
