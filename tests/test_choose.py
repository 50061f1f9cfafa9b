"""``Chooser``: how generate picks the next ids (the parts the generic loop runs, and the whole
choice that a compiled step runs in its graph)."""

from __future__ import annotations

import torch

from hat.generation import Chooser, GenerationConfig, VocabAutomaton, build_warpers
from hat.splitter import EOD, PAD

BYTES = [bytes([b]) if b not in (EOD, PAD) else b"" for b in range(256)]  # as HAT's spec


def chooser(**config) -> Chooser:
    cfg = GenerationConfig(**config)
    automaton = VocabAutomaton(BYTES, {EOD, 9999}, {PAD}, torch.device("cpu"))
    return Chooser(automaton, build_warpers(cfg), cfg.do_sample, 2, PAD)


def test_the_exponential_race_samples_the_softmax() -> None:
    """Frequencies of 40k draws match softmax(scores) (the race is not a greedy pick with
    noise: each id wins with its probability); refused ids (-inf) never win."""
    choose = chooser(do_sample=True)
    scores = torch.full((1, 256), -float("inf"))
    scores[0, [65, 66, 67, 68]] = torch.tensor([2.0, 1.0, 0.0, -1.0])
    generator = torch.Generator().manual_seed(0)
    draws = 40_000
    noise = choose.noise(draws, 256, torch.device("cpu"), generator)
    picked = choose.pick(scores.expand(draws, -1), noise)
    freq = torch.bincount(picked, minlength=256).float() / draws
    assert set(picked.unique().tolist()) <= {65, 66, 67, 68}
    expected = scores[0, 65:69].softmax(-1)
    torch.testing.assert_close(freq[65:69], expected, atol=0.01, rtol=0)


def test_a_zero_draw_never_makes_a_refused_id_win() -> None:
    """A draw of exactly 0 is clamped: -inf - log(0) would be nan, which argmax prefers."""
    choose = chooser(do_sample=True)
    scores = torch.full((1, 256), -float("inf"))
    scores[0, 65] = 0.0
    assert choose.pick(scores, torch.zeros(1, 256)).item() == 65


def test_the_whole_choice() -> None:
    """Greedy: min_new_tokens refuses the end id (then allows it), a row mid-character may
    only continue it, a tight budget refuses a character it cannot finish, finished rows get
    PAD and keep their reader state; an end id outside the vocabulary is ignored."""
    choose = chooser()
    logits = torch.zeros(3, 256)
    logits[:, EOD] = 5.0  # best: the end of the document
    logits[:, 0xE6] = 4.0  # then a 3-byte lead
    logits[:, 0x41] = 3.0
    state = torch.tensor([0, 2, 0])  # row 1 needs 2 more continuation bytes
    budgets = torch.tensor([10, 10, 10])
    done = torch.tensor([False, False, True])
    ids, new_state = choose(logits, state, torch.tensor(0), budgets, done, None)
    assert ids.tolist()[0] == 0xE6 and ids.tolist()[2] == PAD  # no end before 2 new ids
    assert 0x80 <= ids[1] <= 0xBF and new_state.tolist() == [2, 1, 0]
    ids, _ = choose(logits, state, torch.tensor(2), budgets, done, None)
    assert ids[0] == EOD
    ids, _ = choose(logits, state, torch.tensor(9), budgets, done, None)  # 1 id left
    assert ids[0] == EOD  # min_new_tokens is met; with the end suppressed:
    logits[:, EOD] = -float("inf")
    ids, _ = choose(logits, state, torch.tensor(9), budgets, done, None)
    assert ids[0] == 0x41  # the 3-byte lead could not be finished in 1 id
