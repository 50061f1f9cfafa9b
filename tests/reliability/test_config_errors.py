"""A mistyped setting is an error naming it and the closest known one, in every hydra CLI,
before any work (``+key=value`` adds keys the typed schema lacks: hydra lets them through)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import assert_cli_error, cli, run_clis, tiny

CASES = {  # prog: (module, the mistyped override, the message)
    "hat-train": (
        "hat.cli.train",
        "+trainer.stpes=10",
        "unknown setting trainer.stpes; did you mean trainer.steps?",
    ),
    "hat-eval": (
        "hat.cli.evaluate",
        "+data.sources.0.pth=x.txt",  # inside a list of sources
        "unknown setting data.sources.0.pth; did you mean data.sources.0.path?",
    ),
    "hat-tokenizer": (
        "hat.cli.train_tokenizer",
        "+vocab_sise=300",
        "unknown setting vocab_sise; did you mean vocab_size?",
    ),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Each CLI with its mistyped setting (run side by side), in one directory."""
    directory = tmp_path_factory.mktemp("config_errors")
    extra = {  # small jobs: a CLI that ignored the mistyped key would finish in seconds
        "hat-train": [
            *tiny("trainer.steps=1", "trainer.checkpoint_interval=0", "schedule.warmup_steps=0"),
            f"trainer.output_dir={directory / 'run'}",
        ],
        "hat-eval": [f"models=[{directory / 'model'}]", f"output={directory / 'out'}"],
        "hat-tokenizer": ["max_bytes=20000", f"output={directory / 'out'}"],
    }
    commands = {
        prog: cli(override, *extra[prog], module=module)
        for prog, (module, override, _) in CASES.items()
    }
    return directory, run_clis(commands, cwd=directory)


@pytest.mark.slow
@pytest.mark.parametrize("prog", CASES)
def test_unknown_setting_is_named_with_the_closest_known_one(prog: str, runs: tuple) -> None:
    directory, results = runs
    assert_cli_error(results[prog], prog, CASES[prog][2])
    assert not (directory / "run" / "metrics.jsonl").exists() and not (directory / "out").exists()
