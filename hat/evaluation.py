"""Evaluation built on one primitive, ``model.score``: works the same for HAT and the BPE twin.

- ``bits_per_byte``: held-out compression, comparable across tokenizers.
- ``multiple_choice``: BIG-bench style tasks (each choice scored by log-likelihood given the input).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hat.modeling import PreTrainedLM


def bits_per_byte(
    model: PreTrainedLM,
    texts: Sequence[str],
    contexts: Sequence[str] | None = None,
    batch_size: int = 16,
    rolling: bool = False,
    window_bytes: int | None = None,
) -> float:
    """Total negative log-likelihood of ``texts`` (each a new document, or given its context),
    in bits, divided by their total UTF-8 byte count (the text's bytes only; the trainer's
    ``eval_bpb`` on packed documents also predicts and counts each document's end, one byte
    more per document). ``rolling``/``window_bytes``: texts
    longer than the model's context are scored in windows (see ``PreTrainedLM.score``)."""
    scores = model.score(
        texts, contexts, batch_size=batch_size, rolling=rolling, window_bytes=window_bytes
    )
    num_bytes = sum(len(t.encode("utf-8")) for t in texts)
    if num_bytes == 0:
        raise ValueError("bits_per_byte needs at least one non-empty text")
    return -sum(scores) / math.log(2) / num_bytes


@dataclass
class MultipleChoiceExample:
    """One question: the prompt and the choices, with the index of the correct one."""

    input: str
    choices: list[str]
    answer: int


@dataclass
class MultipleChoiceResult:
    accuracy: float
    accuracy_byte_normalised: float  # log-likelihood per byte: not biased towards short choices
    num_examples: int


def multiple_choice(
    model: PreTrainedLM,
    examples: Iterable[MultipleChoiceExample],
    separator: str = " ",
    batch_size: int = 32,
) -> MultipleChoiceResult:
    """Score every choice as ``separator + choice`` given the example's input as context."""
    examples = list(examples)
    texts = [separator + c for ex in examples for c in ex.choices]
    contexts = [ex.input for ex in examples for _ in ex.choices]
    scores = model.score(texts, contexts, batch_size=batch_size)
    correct = correct_norm = 0
    position = 0
    for ex in examples:
        raw = scores[position : position + len(ex.choices)]
        norm = [s / max(len((separator + c).encode()), 1) for s, c in zip(raw, ex.choices)]
        position += len(ex.choices)
        correct += int(max(range(len(raw)), key=raw.__getitem__) == ex.answer)
        correct_norm += int(max(range(len(norm)), key=norm.__getitem__) == ex.answer)
    n = max(len(examples), 1)
    return MultipleChoiceResult(correct / n, correct_norm / n, len(examples))


def load_bigbench(path: str | Path, limit: int | None = None) -> list[MultipleChoiceExample]:
    """Read a BIG-bench JSON task (examples with ``input`` and ``target_scores``)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    examples = []
    for raw in data["examples"][:limit]:
        choices = list(raw["target_scores"])
        answer = max(range(len(choices)), key=lambda i: raw["target_scores"][choices[i]])
        examples.append(MultipleChoiceExample(raw["input"], choices, answer))
    return examples
