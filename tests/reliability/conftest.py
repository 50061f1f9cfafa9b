"""What the reliability tests share: one tiny training run (copied by the tests that damage or
continue it), and the bad and the odd-but-valid text files every entry point is fed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import check, cli, run_cli, tiny

# 20 steps, a checkpoint every 5 (the newest three kept: step 10, 15, 20), an export at step 10
RUN = tiny(
    "trainer.steps=20",
    "trainer.checkpoint_interval=5",
    "trainer.keep_last=3",
    "trainer.export_interval=10",
)

LATIN1 = "Café crème brûlée, naïve.\n\nSecond paragraph à la mode.\n\n".encode("latin-1") * 20
# files no entry point may read silently: name -> content (None: the file does not exist)
BAD_FILES = {
    "empty": b"",
    "missing": None,
    "latin1": LATIN1,  # byte 3 is "é" in Latin-1: not UTF-8
    "binary": bytes(range(256)) * 8,  # byte 128 (0x80) is the first that is not UTF-8
}
# valid text that looks nothing like the training data: every entry point takes it
ODD_TEXTS = {
    "cjk": "日本語のテキストです。中文文本，没有空格。한국어 텍스트.",
    "nul": "before\x00after\x00\x00end",
    "emoji_zwj": "👨\u200d👩\u200d👧 family, 👩🏽\u200d💻 coder, 🏳️\u200d🌈 flag",
}


def write_bad_file(directory: Path, name: str) -> Path:
    path = directory / f"{name}.txt"
    if BAD_FILES[name] is not None:
        path.write_bytes(BAD_FILES[name])
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of RUN: checkpoints/step_000000{10,15,20}, exports/step_00000010, model/.
    Read it, never change it: tests that do work on a copy (``run_copy``)."""
    out = tmp_path_factory.mktemp("tiny_run") / "run"
    check(run_cli(cli(*RUN, f"trainer.output_dir={out}")))
    return out


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))
