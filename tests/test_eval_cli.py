"""hat-eval / compare_models: several models on the same documents, files and tasks."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

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


@pytest.mark.parametrize(
    ("setting", "value"), [("max_docs", -1), ("bigbench_limit", -1), ("bigbench_limit", 0)]
)
def test_hat_eval_names_a_count_below_range(tmp_path: Path, setting: str, value: int) -> None:
    """max_docs=-1 failed inside islice with no setting named; bigbench_limit=-1 dropped each
    task's last example, 0 scored none (accuracy 0.0): errors that name the setting, before
    any model loads."""
    from hat.cli.evaluate import EvalJob, run

    task = tmp_path / "task.json"
    task.write_text(json.dumps(TASK))
    job = EvalJob(models=[str(tmp_path / "not-loaded")], bigbench=[str(task)], device="cpu")
    setattr(job, setting, value)
    with pytest.raises(ValueError, match=f"{setting} must be"):
        run(job)


def test_text_files_lose_their_byte_order_mark(tmp_path: Path) -> None:
    """A UTF-8 file saved with a byte order mark (Windows Notepad, PowerShell): the mark is no
    text, neither the start of hat-generate's first prompt nor 3 bytes of a hat-eval text."""
    import argparse

    from hat.cli.common import read_text_file
    from hat.cli.generate import read_prompts

    path = tmp_path / "prompts.txt"
    path.write_bytes("\ufeffOnce upon\r\nZwölf\r\n".encode())
    assert read_text_file(str(path), "texts") == "Once upon\r\nZwölf\r\n"
    args = argparse.Namespace(prompt=None, prompt_file=str(path))
    assert read_prompts(args) == ["Once upon", "Zwölf"]
    path.write_bytes(b"a\xef\xbb\xbfb")  # not at the start: text (U+FEFF), kept
    assert read_text_file(str(path), "texts") == "a\ufeffb"
    path.write_bytes(b"\xef\xbb\xbfa\xffb")  # a bad byte: its offset in the file
    with pytest.raises(ValueError, match=r"byte 4: b'\\xffb'"):
        read_text_file(str(path), "texts")


def test_hat_eval_output_in_a_new_folder_or_a_folder(tiny_hat, tmp_path: Path) -> None:
    """output= in a folder that does not exist yet is written (it was a traceback after the
    whole evaluation, the results lost); output= naming a folder fails before any model
    loads, as a one-line error."""
    from tests.helpers import run_clis

    model = tiny_hat.save_pretrained(tmp_path / "m")
    book = tmp_path / "book.txt"
    book.write_text("It is a truth universally acknowledged. " * 3, encoding="utf-8")
    out = tmp_path / "results" / "run1" / "eval.json"
    common = (f"models=[{model}]", "max_docs=0", f"texts=[{book}]")
    procs = run_clis(
        {
            "new": cli(*common, f"output={out}", module="hat.cli.evaluate"),
            "folder": cli(*common, f"output={tmp_path}", module="hat.cli.evaluate"),
        },
        cwd=tmp_path,
    )
    check(procs["new"])
    assert set(json.loads(out.read_text())["models"][str(model)]["bits_per_byte"]) == {"book.txt"}
    assert_cli_error(procs["folder"], "hat-eval", f"output: {tmp_path} is a directory")
    assert "bits/byte" not in procs["folder"].stdout  # refused before evaluating


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


def test_hat_eval_keeps_files_of_the_same_name_apart(tiny_hat, tmp_path: Path) -> None:
    """Two text files or tasks with one name (en/test.txt and de/test.txt; BIG-bench's
    <task>/task.json) are two rows, not the last one under a shared name."""
    from hat.cli.evaluate import EvalJob, run

    model_dir = tiny_hat.save_pretrained(tmp_path / "m")
    texts, tasks = [], []
    for lang, sentence in (("en", "The cat sat on the mat. "), ("de", "Zwölf Boxkämpfer. ")):
        (tmp_path / lang).mkdir()
        (tmp_path / lang / "test.txt").write_text(sentence * 4, encoding="utf-8")
        texts.append(str(tmp_path / lang / "test.txt"))
        (tmp_path / lang / "task.json").write_text(json.dumps(TASK if lang == "en" else {
            "examples": TASK["examples"][:1]
        }))  # fmt: skip
        tasks.append(str(tmp_path / lang / "task.json"))
    job = EvalJob(models=[str(model_dir)], max_docs=0, texts=texts, bigbench=tasks, device="cpu")
    row = run(job)["models"][str(model_dir)]
    assert set(row["bits_per_byte"]) == set(texts)
    for path in texts:
        text = Path(path).read_text(encoding="utf-8")
        expected = bits_per_byte(tiny_hat, [text], rolling=True)
        assert row["bits_per_byte"][path] == pytest.approx(expected, rel=1e-5)
    assert {k: v["num_examples"] for k, v in row["tasks"].items()} == dict(zip(tasks, [2, 1]))
    # names that differ stay short
    job = EvalJob(models=[str(model_dir)], max_docs=0, texts=texts[:1], bigbench=tasks[:1])
    row = run(job)["models"][str(model_dir)]
    assert set(row["bits_per_byte"]) == {"test.txt"} and set(row["tasks"]) == {"task"}


def test_a_device_this_machine_lacks_is_a_one_line_error(tiny_hat, tmp_path: Path) -> None:
    """hat-generate --device / hat-eval device=: an unavailable or misspelt device fails with
    the setting's name before the model loads, not with torch's traceback."""
    import torch

    from hat.cli.common import resolve_device

    assert resolve_device("cpu", "--device") == "cpu"
    assert resolve_device("auto", "device") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="--device: 'gpu' is not a device"):
        resolve_device("gpu", "--device")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match=r"device: 'cuda:\d+' but"):
        resolve_device(f"cuda:{count}", "device")
    model = str(tiny_hat.save_pretrained(tmp_path / "m"))
    bad = "gpu" if count else "cuda"
    proc = run_cli(cli(model, "--prompt", "Hi", "--device", bad, module="hat.cli.generate"))
    assert_cli_error(proc, "hat-generate", f"--device: '{bad}'")
    proc = run_cli(
        cli(f"models=[{model}]", f"device={bad}", module="hat.cli.evaluate"), cwd=tmp_path
    )
    assert_cli_error(proc, "hat-eval", f"device: '{bad}'")


def test_hat_generate_backbone_wait_error_names_the_option(capsys) -> None:
    from hat.cli.generate import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["m", "--backbone-wait", "many"])
    err = capsys.readouterr().err
    assert "argument --backbone-wait: 'auto' or a whole number, got 'many'" in err
    assert "<lambda>" not in err


class _FailingDocuments(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> None:
        raise ValueError("cannot open the hub dataset x: offline; give local files")


def test_an_error_from_a_loader_worker_is_one_line(capsys) -> None:
    """Data errors raised in DataLoader workers (a hub dataset offline) arrive wrapped in the
    worker's traceback; the CLI prints the error's own message on one line."""
    from hat.cli.common import cli_errors

    loader = torch.utils.data.DataLoader(_FailingDocuments(), num_workers=1)
    with pytest.raises(SystemExit), cli_errors("hat-train"):
        next(iter(loader))
    err = capsys.readouterr().err
    assert err == "hat-train: error: cannot open the hub dataset x: offline; give local files\n"
