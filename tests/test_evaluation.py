"""Evaluation helpers agree with the model's own scoring and read BIG-bench files."""

from __future__ import annotations

import json
import math

import pytest

from hat.evaluation import MultipleChoiceExample, bits_per_byte, load_bigbench, multiple_choice
from tests.conftest import SHARED


@pytest.fixture(params=["hat", "bpe"])
def model(request, tiny_hat, tiny_bpe):
    return tiny_hat if request.param == "hat" else tiny_bpe


def test_bits_per_byte_matches_scores(model) -> None:
    texts = ["One text.", "Another, longer text with ünïcödé."]
    expected = -sum(model.score(texts)) / math.log(2) / sum(len(t.encode()) for t in texts)
    assert bits_per_byte(model, texts) == pytest.approx(expected)
    assert 0 < expected < 16  # an untrained model is near 8 bits per byte, never absurd


def test_multiple_choice_picks_highest_likelihood(model) -> None:
    examples = [MultipleChoiceExample("Q: pick", ["a", "bbbbbbbbbbbbbbbbbbbbbbbb"], 0)]
    result = multiple_choice(model, examples)
    scores = model.score([" a", " bbbbbbbbbbbbbbbbbbbbbbbb"], ["Q: pick"] * 2)
    assert result.accuracy == float(scores[0] > scores[1])
    assert result.num_examples == 1


def test_load_bigbench(tmp_path) -> None:
    task = {"examples": [{"input": "x?", "target_scores": {"no": 0, "yes": 1}}]}
    path = tmp_path / "task.json"
    path.write_text(json.dumps(task))
    (example,) = load_bigbench(path)
    assert example.choices == ["no", "yes"] and example.answer == 1


def test_every_top_scored_bigbench_choice_counts_as_correct(tmp_path) -> None:
    """BIG-bench may give several choices the top score: picking any of them is right."""
    from hat.evaluation import choices_correct

    task = {"examples": [{"input": "x?", "target_scores": {"a": 1, "b": 1, "c": 0}}]}
    path = tmp_path / "task.json"
    path.write_text(json.dumps(task))
    examples = load_bigbench(path)
    for scores, right in (
        ([-3.0, -1.0, -2.0], True),
        ([-1.0, -3.0, -2.0], True),
        ([-3, -2, -1], False),
    ):
        assert choices_correct(examples, scores)[0] == [right]


@pytest.mark.skipif(
    not (SHARED / "evaldata/bigbench/hyperbaton.json").is_file(), reason="../shared absent"
)
def test_real_bigbench_task_runs(tiny_hat) -> None:
    examples = load_bigbench(SHARED / "evaldata/bigbench/hyperbaton.json", limit=8)
    result = multiple_choice(tiny_hat, examples)
    assert 0.0 <= result.accuracy <= 1.0 and result.num_examples == 8
