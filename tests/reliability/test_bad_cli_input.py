"""hat-eval and hat-generate on input files they cannot use (empty, missing, not UTF-8, binary,
a BIG-bench file that is not multiple choice): a one-line error naming the file, exit 1, no
traceback; on valid text unlike the training data (CJK, NUL bytes, emoji sequences, a word
longer than the context): finite numbers and generated text.

hat-eval runs as a subprocess; hat-generate's matrix calls its ``main`` in this process (the
same code, without 3 s of imports per case), and its subprocess exit is checked in
test_exports.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from hat.cli import generate
from tests.helpers import assert_cli_error, check, cli, run_cli, run_clis
from tests.reliability.conftest import BAD_FILES, ODD_TEXTS, write_bad_file

EXPECTED = {  # what the error says about each bad file (beside its path)
    "empty": "is empty",
    "missing": "No such file or directory",
    "latin1": "is not UTF-8 text (byte 3: b'\\xe9 cr')",
    "binary": "is not UTF-8 text (byte 128: b'\\x80\\x81\\x82\\x83')",
}


def hat_eval(*args: str) -> list[str]:
    return cli("max_docs=0", *args, module="hat.cli.evaluate")


@pytest.fixture(scope="module")
def bad_file_runs(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """hat-eval on each bad text file and on a BIG-bench file whose second example has no
    ``target_scores`` (run side by side): ``{name: (file, result)}``."""
    directory = tmp_path_factory.mktemp("bad_eval_input")
    files = {name: write_bad_file(directory, name) for name in BAD_FILES}
    files["bigbench"] = directory / "generative.json"
    examples = [{"input": "2 + 2 =", "target_scores": {"4": 1, "5": 0}}]
    examples.append({"input": "Say hello", "target": "Hello"})  # generative: not scorable
    files["bigbench"].write_text(json.dumps({"examples": examples}))
    model = f"models=[{tiny_run / 'model'}]"
    commands = {name: hat_eval(model, f"texts=[{path}]") for name, path in files.items()}
    commands["bigbench"] = hat_eval(model, f"bigbench=[{files['bigbench']}]")
    results = run_clis(commands, cwd=directory)
    return {name: (files[name], results[name]) for name in files}


@pytest.mark.slow
@pytest.mark.parametrize("name", BAD_FILES)
def test_hat_eval_names_a_bad_text_file(name: str, bad_file_runs: dict) -> None:
    path, proc = bad_file_runs[name]
    assert_cli_error(proc, "hat-eval", str(path), EXPECTED[name])


@pytest.mark.slow
def test_hat_eval_names_a_bigbench_file_without_target_scores(bad_file_runs: dict) -> None:
    path, proc = bad_file_runs["bigbench"]
    assert_cli_error(proc, "hat-eval", f"{path}, example 1: needs 'input'", "'target_scores'")


@pytest.mark.slow
def test_hat_eval_scores_odd_texts_to_finite_numbers(tiny_run: Path, tmp_path: Path) -> None:
    """Each text a file; the long word (10 KB, over twice the model's 4 KB context) is read in
    rolling windows. (hat-train trains on a 200 KB one: test_bad_data.py.)"""
    texts = {**ODD_TEXTS, "long_word": "x" * 10_000}
    for name, text in texts.items():
        (tmp_path / f"{name}.txt").write_text(text, encoding="utf-8")
    files = ",".join(str(tmp_path / f"{name}.txt") for name in texts)
    out = tmp_path / "eval.json"
    args = hat_eval(f"models=[{tiny_run / 'model'}]", f"texts=[{files}]", f"output={out}")
    check(run_cli(args, cwd=tmp_path))
    (row,) = json.loads(out.read_text())["models"].values()
    assert set(row["bits_per_byte"]) == {f"{name}.txt" for name in texts}
    assert all(math.isfinite(v) and v > 0 for v in row["bits_per_byte"].values())


def hat_generate(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """``hat-generate ARGS`` in this process: (exit code, stdout, stderr)."""
    try:
        generate.main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", BAD_FILES)
def test_hat_generate_names_a_bad_prompt_file(
    name: str, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = write_bad_file(tmp_path, name)
    code, out, err = hat_generate(capsys, str(tiny_run / "model"), "--prompt-file", str(path))
    assert code == 1 and out == ""
    assert err.startswith("hat-generate: error: ") and err.count("\n") == 1, err
    assert str(path) in err and EXPECTED[name] in err


def test_hat_generate_continues_odd_prompts(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(ODD_TEXTS.values()) + "\n", encoding="utf-8")
    args = [str(tiny_run / "model"), "--prompt-file", str(prompts), "--max-new-tokens", "8"]
    code, out, err = hat_generate(capsys, *args, "--seed", "0", "--do-sample")
    assert code == 0, err
    positions = [out.index(text) for text in ODD_TEXTS.values()]  # each prompt, continued
    assert positions == sorted(positions) and len(out) > sum(map(len, ODD_TEXTS.values()))


def test_hat_generate_names_a_prompt_longer_than_the_context(
    tiny_run: Path, capsys: pytest.CaptureFixture
) -> None:
    """A 200 KB word cannot be continued by a model with a 4 KB context: say so, once."""
    code, out, err = hat_generate(capsys, str(tiny_run / "model"), "--prompt", "x" * 200_000)
    assert code == 1 and err.count("\n") == 1
    assert "prompt 0 is 200001 bytes (document start included), longer than the model's" in err
