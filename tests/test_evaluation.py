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


def test_load_bigbench_refuses_scores_that_are_not_numbers(tmp_path) -> None:
    """A task whose target_scores are text ("1") is a ValueError naming the file and example
    (hat-eval prints it as one line), not a TypeError from comparing "1" with 0."""
    path = tmp_path / "task.json"
    path.write_text(
        json.dumps({"examples": [{"input": "x?", "target_scores": {"a": "1", "b": 0}}]})
    )
    with pytest.raises(ValueError, match=r"task.json, example 0: .*a number"):
        load_bigbench(path)


def test_compare_models_refuses_window_bytes_zero(tiny_hat) -> None:
    """``window_bytes=0`` (hat-eval window_bytes=0) is out of range, as ``score`` says; it must
    not quietly become the default window."""
    from hat.evaluation import compare_models

    with pytest.raises(ValueError, match="window_bytes=0 must be in"):
        compare_models({"hat": tiny_hat}, {"docs": ["Some text."]}, window_bytes=0)


@pytest.mark.parametrize("limit", [0, -1])
def test_task_limit_below_one_is_an_error(tmp_path, limit) -> None:
    """hat-eval bigbench_limit=-1 dropped the last example (a slice); 0 scored no example
    and reported accuracy 0.0; the JSON-lines reader said the file had no examples."""
    from hat.evaluation import load_task

    task = {"examples": [{"input": f"q{i}?", "target_scores": {"a": 1, "b": 0}} for i in range(3)]}
    (tmp_path / "task.json").write_text(json.dumps(task))
    line = json.dumps({"context": "q?", "choices": ["a", "b"], "label": 0})
    (tmp_path / "task.jsonl").write_text(line + "\n")
    for name in ("task.json", "task.jsonl"):
        with pytest.raises(ValueError, match="limit must be >= 1"):
            load_task(tmp_path / name, limit=limit)
    assert len(load_task(tmp_path / "task.json", limit=2)) == 2
