"""hat-eval / compare_models: several models on the same documents, files and tasks."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

import hat
from hat.data import DataConfig, iter_documents
from hat.evaluation import MultipleChoiceExample, bits_per_byte, compare_models, multiple_choice
from tests.helpers import assert_cli_error, check, cli, run_cli

TASK = {
    "examples": [
        {"input": "Which one is a greeting?", "target_scores": {"hello": 1, "xqzzv": 0}},
        {"input": "Pick the word:", "target_scores": {"qqqq": 0, "house": 1, "zzzt": 0}},
    ]
}


def test_compare_models_reads_every_model_through_the_same_window(tiny_hat, tiny_bpe) -> None:
    docs = {"long": ["It was a dark and stormy night; " * 200], "short": ["Hi there."]}
    task = {"mc": [MultipleChoiceExample("Q?", [" yes", " no"], 0)]}
    results = compare_models({"hat": tiny_hat, "bpe": tiny_bpe}, docs, task)
    window = min(tiny_hat.max_window_bytes(), tiny_bpe.max_window_bytes())
    assert results["window_bytes"] == window
    for name, model in (("hat", tiny_hat), ("bpe", tiny_bpe)):
        row = results["models"][name]
        assert row["model_type"] == name and row["params"] == model.num_parameters()
        for key, texts in docs.items():
            expected = bits_per_byte(model, texts, rolling=True, window_bytes=window)
            assert row["bits_per_byte"][key] == pytest.approx(expected)
        assert row["tasks"]["mc"]["accuracy"] == multiple_choice(model, task["mc"]).accuracy


@pytest.mark.slow
def test_hat_eval_cli(tiny_hat, tiny_bpe, tmp_path: Path) -> None:
    hat_dir, bpe_dir = (
        tiny_hat.save_pretrained(tmp_path / "h"),
        tiny_bpe.save_pretrained(tmp_path / "b"),
    )
    book = tmp_path / "book.txt"
    book.write_text("Chapter 1.\n\nIt is a truth universally acknowledged. " * 50, encoding="utf-8")
    task = tmp_path / "task.json"
    task.write_text(json.dumps(TASK))
    out = tmp_path / "eval.json"
    args = [
        f"models=[{hat_dir},{bpe_dir}]",
        "max_docs=5",
        f"texts=[{book}]",
        f"bigbench=[{task}]",
        f"output={out}",
    ]
    proc = run_cli(cli(*args, module="hat.cli.evaluate"), env={"COLUMNS": "200"}, cwd=tmp_path)
    check(proc)
    assert "held_out (bits/byte)" in proc.stdout and "task (acc" in proc.stdout
    results = json.loads(out.read_text())
    held_out = list(itertools.islice(iter_documents(DataConfig(), "eval"), 5))
    window = results["window_bytes"]
    for directory, model in ((hat_dir, tiny_hat), (bpe_dir, tiny_bpe)):
        row = results["models"][str(directory)]
        expected = bits_per_byte(model, held_out, rolling=True, window_bytes=window)
        assert row["bits_per_byte"]["held_out"] == pytest.approx(expected, rel=1e-5)
        assert set(row["bits_per_byte"]) == {"held_out", "book.txt"}
        assert row["tasks"]["task"]["num_examples"] == 2

    missing = run_cli(cli(f"models=[{tmp_path / 'nope'}]", module="hat.cli.evaluate"), cwd=tmp_path)
    assert_cli_error(missing, "hat-eval", "config.json not found")


def test_load_pretrained_picks_the_class(tiny_hat, tiny_bpe, tmp_path: Path) -> None:
    assert isinstance(
        hat.load_pretrained(tiny_hat.save_pretrained(tmp_path / "h")), hat.HATForCausalLM
    )
    assert isinstance(
        hat.load_pretrained(tiny_bpe.save_pretrained(tmp_path / "b")), hat.BPEForCausalLM
    )
    with pytest.raises(FileNotFoundError, match="config.json"):
        hat.load_pretrained(tmp_path)
