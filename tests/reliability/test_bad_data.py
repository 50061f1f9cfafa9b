"""hat-train on data files it cannot use: empty, missing, not UTF-8, binary, a hub dataset
while offline: each a one-line error naming the file (and the byte); invalid UTF-8 decoded on
request (``encoding_errors=replace``) with the replacements counted in the log; and valid text
unlike the training data (CJK, NUL bytes, emoji sequences, a 200 KB word) trains."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.helpers import assert_cli_error, check, cli, read_metrics, run_cli, run_clis, tiny
from tests.reliability.conftest import BAD_FILES, LATIN1, ODD_TEXTS, write_bad_file

DATA = tiny(
    "trainer.steps=2",
    "trainer.checkpoint_interval=0",
    "trainer.eval_batches=1",
    "trainer.deterministic=false",
    "schedule.warmup_steps=1",
    "data=local",
    "data.num_workers=0",
)


def train_on(path: Path | str, out: Path, *overrides: str) -> list[str]:
    return cli(*DATA, f"data.sources.0.path={path}", *overrides, f"trainer.output_dir={out}")


EXPECTED = {  # what the error says about each bad file (beside its path)
    "empty": "has no train documents",
    "missing": "no file matches path=",
    "latin1": "is not UTF-8 text (byte 3: b'\\xe9 cr')",
    "binary": "is not UTF-8 text (byte 128: b'\\x80\\x81\\x82\\x83')",
}


@pytest.fixture(scope="module")
def bad_file_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """hat-train on each bad file (run side by side): ``{name: (file, run dir, result)}``."""
    directory = tmp_path_factory.mktemp("bad_data")
    files = {name: write_bad_file(directory, name) for name in BAD_FILES}
    outs = {name: directory / f"run_{name}" for name in BAD_FILES}
    results = run_clis({name: train_on(files[name], outs[name]) for name in BAD_FILES})
    return {name: (files[name], outs[name], results[name]) for name in BAD_FILES}


@pytest.mark.slow
@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_data_file_is_named(name: str, bad_file_runs: dict) -> None:
    path, out, proc = bad_file_runs[name]
    assert_cli_error(proc, "hat-train", str(path), EXPECTED[name])
    assert not (out / "metrics.jsonl").exists()


@pytest.mark.slow
def test_invalid_utf8_trains_when_replacement_is_asked_for_and_is_counted(tmp_path: Path) -> None:
    write_bad_file(tmp_path, "latin1")  # 20 x 2 paragraphs, 6 bytes that are not UTF-8 each time
    write_bad_file(tmp_path, "binary")  # one paragraph, 8 x 128 such bytes
    replace = "data.sources.0.encoding_errors=replace"
    proc = run_cli(train_on(tmp_path / "*.txt", tmp_path / "run", replace))
    check(proc)
    assert LATIN1.count(b"\n\n") == 40
    assert "1144 U+FFFD characters in 41 documents (invalid UTF-8 replaced" in proc.stdout
    assert all(math.isfinite(r["loss"]) for r in read_metrics(tmp_path / "run"))


@pytest.mark.slow
def test_odd_but_valid_text_trains(tmp_path: Path) -> None:
    """Paragraphs of CJK, NUL bytes and emoji ZWJ sequences, then a 200 KB word without a
    space: all in the first steps' rows, every loss finite."""
    path = tmp_path / "odd.txt"
    path.write_text("\n\n".join([*ODD_TEXTS.values(), "x" * 200_000]), encoding="utf-8")
    out = tmp_path / "run"
    check(run_cli(train_on(path, out, "data.eval_every=0")))
    train_lines = read_metrics(out)
    assert [r["step"] for r in train_lines] == [1, 2]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in train_lines)
    assert train_lines[-1]["bytes_seen"] > len(path.read_bytes()) - 200_000  # past the odd ones


@pytest.mark.slow
def test_hub_dataset_offline_is_named(tmp_path: Path) -> None:
    offline = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = run_cli(train_on("nobody-here/no-such-corpus", tmp_path / "run"), env=offline)
    assert_cli_error(
        proc,
        "hat-train",
        "source 'nobody-here/no-such-corpus': cannot open the hub dataset",
        "HF_DATASETS_OFFLINE=1 needs it cached",
    )
