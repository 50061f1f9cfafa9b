"""Evaluation built on one primitive, ``model.score``: works the same for HAT and the BPE twin.

- ``bits_per_byte``: held-out compression, comparable across tokenizers.
- ``multiple_choice``: BIG-bench style tasks (each choice scored by log-likelihood given the input).
- ``compare_models``: several models (HAT, its twin, checkpoints) on the same documents and
  tasks, long documents read through the same window; ``hat-eval`` is its command line.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from hat.modeling import PreTrainedLM
from hat.modeling import bits_per_byte as nats_to_bpb


def bits_per_byte(
    model: PreTrainedLM,
    texts: Sequence[str],
    contexts: Sequence[str] | None = None,
    batch_size: int = 16,
    rolling: bool = False,
    window_bytes: int | None = None,
) -> float:
    """Total negative log-likelihood of ``texts`` (each a new document, or given its context),
    in bits, divided by their total UTF-8 byte count: the definition the trainer's ``eval_bpb``
    uses too (``CausalLMOutput``). ``rolling``/``window_bytes``: texts longer than the model's
    context are scored in windows (see ``PreTrainedLM.score``)."""
    scores = model.score(
        texts, contexts, batch_size=batch_size, rolling=rolling, window_bytes=window_bytes
    )
    num_bytes = sum(len(t.encode("utf-8")) for t in texts)
    if num_bytes == 0:
        raise ValueError("bits_per_byte needs at least one non-empty text")
    return nats_to_bpb(-sum(scores), num_bytes)


@dataclass
class MultipleChoiceExample:
    """One question: the prompt and the choices, with the index of the correct one (and of
    any other choice that is as correct: BIG-bench tasks may give several the top score)."""

    input: str
    choices: list[str]
    answer: int
    also_correct: tuple[int, ...] = ()

    def is_correct(self, choice: int) -> bool:
        return choice == self.answer or choice in self.also_correct


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
    correct, correct_norm = choices_correct(examples, scores, separator)
    n = max(len(examples), 1)
    return MultipleChoiceResult(sum(correct) / n, sum(correct_norm) / n, len(examples))


def choices_correct(
    examples: Sequence[MultipleChoiceExample], scores: Sequence[float], separator: str = " "
) -> tuple[list[bool], list[bool]]:
    """Per example, whether the best-scoring choice is the answer: by total log-likelihood,
    and by log-likelihood per byte of ``separator + choice``. ``scores`` holds every choice of
    every example in order (ties go to the first choice)."""
    correct, correct_norm = [], []
    position = 0
    for ex in examples:
        raw = scores[position : position + len(ex.choices)]
        norm = [s / max(len((separator + c).encode()), 1) for s, c in zip(raw, ex.choices)]
        position += len(ex.choices)
        correct.append(ex.is_correct(max(range(len(raw)), key=raw.__getitem__)))
        correct_norm.append(ex.is_correct(max(range(len(norm)), key=norm.__getitem__)))
    return correct, correct_norm


def load_bigbench(path: str | Path, limit: int | None = None) -> list[MultipleChoiceExample]:
    """Read a BIG-bench JSON task (examples with ``input`` and ``target_scores``); a file that
    is not one is a ValueError naming the file and the example."""
    _check_limit(limit)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a JSON task file ({err})") from None
    raw_examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(raw_examples, list) or not raw_examples:
        raise ValueError(
            f"{path} has no examples: a BIG-bench task is a JSON object with a non-empty "
            "'examples' list of {'input': ..., 'target_scores': {choice: score}}"
        )
    examples = []
    for i, raw in enumerate(raw_examples[:limit]):
        has_input = isinstance(raw, dict) and isinstance(raw.get("input"), str)
        scores = raw.get("target_scores") if has_input else None
        numbers = isinstance(scores, dict) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in scores.values()
        )
        if not (numbers and scores):
            raise ValueError(
                f"{path}, example {i}: needs 'input' (text) and a non-empty 'target_scores' (choice -> "
                "score, a number); only multiple-choice tasks can be scored (not generative ones)"
            )
        choices = list(scores)
        # every choice with the top score is right (BIG-bench's multiple_choice_grade credits
        # target_scores[chosen]; fractional scores below the top count as wrong here)
        top = max(scores.values())
        best = [k for k, c in enumerate(choices) if scores[c] == top]
        examples.append(MultipleChoiceExample(raw["input"], choices, best[0], tuple(best[1:])))
    return examples


def load_jsonl_task(path: str | Path, limit: int | None = None) -> list[MultipleChoiceExample]:
    """Read a multiple-choice task in JSON lines: ``{"context": str, "choices": [str, ...],
    "label": index of the right choice (or the right choice itself)}`` per line."""
    _check_limit(limit)
    examples = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if limit is not None and len(examples) >= limit:
                break
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {number} is not valid JSON ({err})") from None
            where = f"{path} line {number}"
            if not isinstance(raw, dict) or not isinstance(raw.get("context"), str):
                raise ValueError(f'{where}: needs "context" (a string), "choices" and "label"')
            choices = raw.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ValueError(f'{where}: "choices" must be a non-empty list of strings')
            label = raw.get("label")
            if isinstance(label, str) and label in choices:
                label = choices.index(label)
            if (
                not isinstance(label, int)
                or isinstance(label, bool)
                or not 0 <= label < len(choices)
            ):
                raise ValueError(
                    f'{where}: "label" must be the index of the right choice (0 to '
                    f"{len(choices) - 1}) or the choice itself, got {label!r}"
                )
            examples.append(MultipleChoiceExample(raw["context"], [str(c) for c in choices], label))
    if not examples:
        raise ValueError(
            f'{path} has no examples: write one JSON object per line, {{"context": ..., '
            '"choices": [...], "label": 0}'
        )
    return examples


def _check_limit(limit: int | None) -> None:
    """``limit`` examples per task: None (all) or >= 1. A negative one would slice examples
    off the end, 0 would leave a task with no examples (and accuracy 0.0)."""
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be >= 1 examples per task (or None: all), got {limit!r}")


def load_task(path: str | Path, limit: int | None = None) -> list[MultipleChoiceExample]:
    """A multiple-choice task from ``.jsonl`` (``load_jsonl_task``) or BIG-bench ``.json``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"task file {path} not found")
    try:
        if Path(path).suffix == ".jsonl":
            return load_jsonl_task(path, limit)
        return load_bigbench(path, limit)
    except UnicodeDecodeError:
        raise ValueError(
            f"task file {path} is not UTF-8: convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None


def shared_window(models: dict[str, Any], window_bytes: int | None) -> int:
    """The rolling window every model is scored through: ``window_bytes``, checked against each
    model, or (None) the longest all of them take. ``is None``, not ``or``: 0 is an error."""
    if window_bytes is None:
        return min(m.max_window_bytes() for m in models.values())
    for model in models.values():
        model.check_window_bytes(window_bytes)
    return window_bytes


def compare_models(
    models: dict[str, PreTrainedLM],
    documents: dict[str, Sequence[str]] | None = None,
    tasks: dict[str, Sequence[MultipleChoiceExample]] | None = None,
    window_bytes: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, Any]:
    """Every model on the same evaluations: bits per byte of each named document set (each
    document scored whole, in rolling windows when long) and accuracy on each named
    multiple-choice task. Returns ``{model: {"bits_per_byte": {set: bpb}, "tasks": {task:
    {...}}}}`` plus ``"window_bytes"``.

    Every model reads long documents through the same window (default: the smallest context
    among the models), so HAT and its twin are compared on equal terms. ``progress``: a
    progress bar over models x evaluations.
    """
    if not models:
        raise ValueError("compare_models needs at least one model")
    window = shared_window(models, window_bytes)
    results: dict[str, Any] = {"window_bytes": window, "models": {}}
    doc_sets = {id(docs): docs for docs in (documents or {}).values() if any(docs)}
    bar = tqdm(
        total=len(models) * (len(doc_sets) + len(tasks or {})),
        desc="evaluating",
        unit="eval",
        disable=not progress,
    )
    for name, model in models.items():
        row: dict[str, Any] = {
            "model_type": model.config.model_type,
            "params": model.num_parameters(),
        }
        scored: dict[int, float] = {}  # one list under two names (a mixture of one source)
        for key, docs in doc_sets.items():
            scored[key] = bits_per_byte(
                model, list(docs), batch_size=batch_size, rolling=True, window_bytes=window
            )
            bar.update()
        row["bits_per_byte"] = {
            name: scored[id(docs)] for name, docs in (documents or {}).items() if any(docs)
        }
        row["tasks"] = {}
        for task, examples in (tasks or {}).items():
            result = multiple_choice(model, examples, batch_size=batch_size)
            row["tasks"][task] = dataclasses.asdict(result)
            bar.update()
        results["models"][name] = row
    bar.close()
    return results
