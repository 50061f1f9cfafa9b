"""What the end-to-end tests share: tiny training settings, running the CLIs in a subprocess,
reading a run's metrics, and the shape of a command-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# tiny model, 4 rows x 256 bytes, 40 steps: a few seconds per run on two CPU cores
TINY = [
    "model=tiny",
    "trainer.row_bytes=256",
    "trainer.global_rows=4",
    "trainer.steps=40",
    "trainer.log_interval=1",
    "trainer.checkpoint_interval=10",
    "trainer.eval_batches=4",
    "trainer.keep_last=2",
    "trainer.sample_new_tokens=0",
    "trainer.deterministic=true",
    "schedule.warmup_steps=5",
]


def with_settings(base: list[str], *overrides: str) -> list[str]:
    """``base`` (hydra overrides) with ``overrides`` replacing its settings of the same keys."""
    keys = {o.split("=", 1)[0].lstrip("+") for o in overrides}
    return [a for a in base if a.split("=", 1)[0] not in keys] + list(overrides)


def tiny(*overrides: str) -> list[str]:
    """TINY with some settings replaced."""
    return with_settings(TINY, *overrides)


def cli(*args: str, module: str = "hat.cli.train") -> list[str]:
    return [sys.executable, "-m", module, *args]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test process's environment for a CLI run: no Triton interpreter (conftest turns it
    on for in-process tests; a CPU run never needs it), one thread per process (the machines
    are shared: two threads per tiny run are slower, not faster), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("OMP_NUM_THREADS", "1")
    return {**env, **(extra or {})}


def run_cli(
    args: list[str], timeout: float = 300, env: dict[str, str] | None = None, **kwargs
) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=cli_env(env), **kwargs
    )


def run_clis(
    commands: dict[str, list[str]], env: dict[str, str] | None = None, **kwargs
) -> dict[str, subprocess.CompletedProcess]:
    """Several independent CLI runs, two at a time (a run spends most of its few seconds
    importing, on one core): ``{name: args}`` -> ``{name: result}``."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {k: pool.submit(run_cli, args, env=env, **kwargs) for k, args in commands.items()}
        return {k: f.result() for k, f in futures.items()}


def check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )


def assert_cli_error(proc: subprocess.CompletedProcess, prog: str, *fragments: str) -> str:
    """The CLI failed the way a user error should: exit code 1, no traceback, one line
    ``<prog>: error: ...`` on stderr holding every fragment. Returns that line."""
    assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def read_metrics(out: Path, kind: str = "train") -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out)}
