"""Continuing a run directory, through ``hat-train``: another run's settings are refused by
name, changed optimizer settings are applied and logged, one live run per directory (a stale
lock is taken over), sweeps keep their jobs apart, a kill inside a checkpoint write or a torn
metrics line loses nothing, damaged checkpoints stop the run naming an intact one."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hat.manifest import sha256
from hat.training import ScheduleConfig, lr_multiplier
from hat.training.checkpoint import CheckpointError, list_checkpoints, verify_checkpoint
from hat.training.resume import ResumeError, RunLock, compare_settings
from tests.helpers import (
    assert_cli_error,
    check,
    cli,
    cli_env,
    losses,
    read_metrics,
    run_cli,
    run_clis,
    tiny,
    with_settings,
)
from tests.reliability.conftest import RUN


def train(out: Path, *overrides: str) -> subprocess.CompletedProcess:
    """hat-train with RUN's settings (``overrides`` replacing some) into ``out``."""
    return run_cli(cli(*with_settings(RUN, *overrides), f"trainer.output_dir={out}"))


def log_of(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


# ---- another run's settings --------------------------------------------------------------------
@pytest.mark.slow
def test_resume_as_another_model_is_refused_naming_it_before_any_work(run_copy: Path) -> None:
    metrics = (run_copy / "metrics.jsonl").read_text()
    record = (run_copy / ".hydra" / "config.yaml").read_text()
    proc = train(run_copy, "model=bpe_tiny")
    assert_cli_error(
        proc,
        "hat-train",
        f"{run_copy / 'checkpoints' / 'step_00000020'} was written by a different run",
        "(model.model_type: 'hat' -> 'bpe', model.name: 'tiny' -> 'bpe_tiny', ",  # broadest first
        "trainer.output_dir=",
        f"delete {run_copy / 'checkpoints'} to start over",
    )
    assert (run_copy / "metrics.jsonl").read_text() == metrics
    assert (run_copy / ".hydra" / "config.yaml").read_text() == record  # the run's record kept
    assert not (run_copy / "tokenizer.model").exists()  # refused before training a tokenizer
    assert not (run_copy / ".lock").exists()  # and no lock left for the next run to take over


def test_changed_architecture_or_data_is_a_conflict_and_optimizer_settings_are_not(
    tiny_run: Path,
) -> None:
    config = json.loads((tiny_run / "checkpoints/step_00000020/trainer_state.json").read_text())
    config = config["config"]
    for section, key, value, message in [
        ("model", "backbone", {**config["model"]["backbone"], "n_layers": 3}, "n_layers: 2 -> 3"),
        ("data", "eval_every", 50, "data.eval_every: 100 -> 50"),
        ("trainer", "seed", 1, "trainer.seed: 0 -> 1"),
    ]:
        changed = {**config, section: {**config[section], key: value}}
        with pytest.raises(ResumeError, match=re.escape(message)):
            compare_settings(config, changed, tiny_run)
    changed = {**config, "optim": {**config["optim"], "lr": 1e-3}}
    changed["trainer"] = {**config["trainer"], "steps": 30, "log_interval": 5}
    assert compare_settings(config, changed, tiny_run) == [
        ("optim.lr", None, 1e-3),
        ("trainer.steps", 20, 30),
    ]


@pytest.mark.slow
def test_changed_lr_is_applied_from_the_resumed_step_and_logged(
    tiny_run: Path, run_copy: Path
) -> None:
    step_10 = run_copy / "checkpoints" / "step_00000010"
    proc = train(run_copy, "optim.lr=0.001", f"trainer.resume={step_10}")
    check(proc)
    assert "resume: optim.lr changed from None to 0.001; applied" in log_of(proc)
    assert f"resumed from {step_10} at step 10" in log_of(proc)
    before, after = read_metrics(tiny_run), read_metrics(run_copy)
    assert [r["step"] for r in after] == list(range(1, 21))
    assert after[:10] == before[:10]  # up to the checkpoint: the old run, old lr
    schedule = ScheduleConfig(warmup_steps=5)  # RUN's schedule: cosine to 10 %
    for old, new in zip(before[10:], after[10:]):
        expected = 0.001 * lr_multiplier(new["step"] - 1, 20, schedule)  # the lr of that step
        assert new["lr"] == pytest.approx(expected, abs=1e-6), new["step"]
        assert old["lr"] > 2 * new["lr"]  # the old peak (0.0024) is gone


# ---- one live run per directory ----------------------------------------------------------------
@pytest.mark.slow
def test_a_second_run_into_a_live_runs_directory_is_refused_naming_its_pid(
    run_copy: Path,
) -> None:
    record = (run_copy / ".hydra" / "config.yaml").read_text()
    lock = RunLock(run_copy)
    lock.acquire()  # this process is the live run
    try:
        procs = run_clis(
            {
                "hat-train": cli(
                    *with_settings(RUN, "trainer.steps=25"), f"trainer.output_dir={run_copy}"
                ),
                "hat-continue": cli(
                    f"init_from={run_copy / 'model'}",
                    f"trainer.output_dir={run_copy}",
                    module="hat.cli.continue_",
                ),
            }
        )
        holder = (run_copy / ".lock").read_text()
    finally:
        lock.release()
    for prog, proc in procs.items():
        assert_cli_error(
            proc, prog, f"{run_copy} is in use by a running training", f"pid {os.getpid()})"
        )
    assert holder == f"host {socket.gethostname()} pid {os.getpid()}\n"  # left as it was
    assert max(losses(run_copy)) == 20
    assert (run_copy / ".hydra" / "config.yaml").read_text() == record  # neither wrote over it


@pytest.mark.slow
def test_resume_after_a_kill_takes_over_its_lock_and_drops_its_torn_metrics_line(
    run_copy: Path,
) -> None:
    """What a SIGKILL leaves: a lock file naming a process that is gone, and a metrics line
    cut short."""
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    ).stdout.strip()
    (run_copy / ".lock").write_text(f"host {socket.gethostname()} pid {gone}\n")
    metrics = run_copy / "metrics.jsonl"
    complete = metrics.read_text()
    with open(metrics, "a") as f:
        f.write('{"kind": "tra')
    proc = train(run_copy)
    check(proc)
    assert (
        f"taking over the lock left by a stopped run (host {socket.gethostname()} pid {gone})"
        in log_of(proc)
    )
    torn_line = len(complete.splitlines()) + 1
    assert f"metrics.jsonl, line {torn_line}: not complete JSON" in log_of(proc)
    text = metrics.read_text()
    assert text.startswith(complete) and '{"kind": "tra' not in text
    assert all(json.loads(line) for line in text.splitlines())
    assert not (run_copy / ".lock").exists()  # released at the end


# ---- sweeps ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_sweep_trains_each_job_in_its_own_directory(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    settings = tiny(
        "trainer.steps=2,4",
        "trainer.checkpoint_interval=0",
        "trainer.eval_batches=1",
        "schedule.warmup_steps=1",
    )
    proc = run_cli(cli("--multirun", *settings, f"trainer.output_dir={out}"))
    check(proc)
    assert "resumed from" not in log_of(proc)
    for job, steps in ((0, 2), (1, 4)):
        assert [r["step"] for r in read_metrics(out / str(job))] == list(range(1, steps + 1))
        assert [p.name for p in list_checkpoints(out / str(job) / "checkpoints")] == [
            f"step_{steps:08d}"
        ]
    assert sha256(out / "0/model/model.safetensors") != sha256(out / "1/model/model.safetensors")
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


# ---- kills and damage ------------------------------------------------------------------------------
def stop(proc: subprocess.Popen) -> None:
    """SIGSTOP, and wait until the process is stopped (the signal is delivered asynchronously)."""
    proc.send_signal(signal.SIGSTOP)
    stat = Path(f"/proc/{proc.pid}/stat")
    deadline = time.monotonic() + 5
    while stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] not in "Tt":
        assert time.monotonic() < deadline, "the process did not stop"
        time.sleep(0.001)


def writing(root: Path) -> list[Path]:
    """The temp directories of checkpoints being written."""
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.name.startswith(".step_") and p.name.endswith(".tmp")]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGSTOP and /proc")
def test_kill_inside_a_checkpoint_write_resumes_from_the_previous_one(
    tiny_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    root = out / "checkpoints"
    proc = subprocess.Popen(
        cli(*RUN, f"trainer.output_dir={out}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
    )
    caught = None  # the temp dir of the write the kill landed in
    deadline = time.monotonic() + 300
    try:
        while caught is None and proc.poll() is None and time.monotonic() < deadline:
            tmp = writing(root)
            if not (tmp and list_checkpoints(root)):  # a write, with a complete one before it
                time.sleep(0.002)
                continue
            stop(proc)
            if tmp[0].is_dir():  # still there with the process frozen: inside the write
                caught = tmp[0]
            else:  # renamed in between: wait for the next write
                proc.send_signal(signal.SIGCONT)
    finally:
        proc.kill()
        proc.wait()
    assert caught is not None, "no checkpoint write was caught in progress"
    assert caught.is_dir()  # the kill left the half-written save behind
    step = int(caught.name[len(".step_") : -len(".tmp")])
    previous = root / f"step_{step - 5:08d}"
    assert list_checkpoints(root)[-1] == previous  # the half-written one is not a checkpoint

    resumed = run_cli(cli(*RUN, f"trainer.output_dir={out}"))
    check(resumed)
    assert f"resumed from {previous} at step {step - 5}" in log_of(resumed)
    got, want = losses(out), losses(tiny_run)
    assert sorted(got) == list(range(1, 21))
    for n in want:
        assert got[n] == pytest.approx(want[n], abs=1e-6), n
    assert not writing(root)  # the leftover was replaced by the complete save


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])  # as by a full disk


def test_a_damaged_checkpoint_names_the_newest_intact_one(tiny_run: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(tiny_run / "checkpoints", tmp_path / "checkpoints"))
    oldest, previous, newest = list_checkpoints(root)
    truncate(newest / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"trainer.resume={re.escape(str(previous))}"):
        verify_checkpoint(newest, [oldest, previous])
    for damaged in (previous / "optimizer.bin", oldest / "trainer_state.json"):
        truncate(damaged)
    with pytest.raises(CheckpointError, match="No earlier checkpoint is intact either"):
        verify_checkpoint(newest, [oldest, previous])


@pytest.mark.slow
def test_damaged_newest_checkpoints_stop_the_run_naming_the_file_and_an_intact_one(
    run_copy: Path,
) -> None:
    """Stopping is the documented choice (not a silent fallback to an older checkpoint): with
    the newest two damaged, the message names the damaged file and the intact third."""
    oldest, previous, newest = list_checkpoints(run_copy / "checkpoints")
    truncate(newest / "model.safetensors")
    truncate(previous / "optimizer.bin")
    proc = train(run_copy, "trainer.steps=30")
    line = assert_cli_error(
        proc,
        "hat-train",
        f"checkpoint file {newest / 'model.safetensors'} is truncated or damaged",
        f"The earlier checkpoint {oldest} is intact: resume from it with trainer.resume={oldest}",
    )
    assert str(previous) not in line  # a damaged checkpoint is never offered
    assert max(losses(run_copy)) == 20  # nothing was trained


@pytest.mark.slow
def test_rolling_back_sets_the_later_checkpoints_aside_and_keeps_the_new_ones(
    run_copy: Path,
) -> None:
    """trainer.resume=<an earlier checkpoint> (what a damaged newest one's message suggests):
    the checkpoints after it move to checkpoints/abandoned/, kept; the rolled-back run's new
    checkpoints are then the newest, so the rotation (keep_last=3) does not delete them in
    favour of the abandoned future, and resume=auto would continue them."""
    checkpoints = run_copy / "checkpoints"
    step_10 = checkpoints / "step_00000010"
    proc = train(
        run_copy, f"trainer.resume={step_10}", "trainer.steps=12", "trainer.checkpoint_interval=1"
    )
    check(proc)
    assert "moved the later checkpoints (step_00000015, step_00000020)" in log_of(proc)
    assert [p.name for p in list_checkpoints(checkpoints)] == [
        "step_00000010",
        "step_00000011",
        "step_00000012",
    ]
    aside = sorted(p.name for p in (checkpoints / "abandoned").iterdir())
    assert aside == ["metrics.jsonl", "step_00000015", "step_00000020"]
    verify_checkpoint(checkpoints / "abandoned" / "step_00000020")  # intact, only moved
    # the abandoned future's metric lines are kept beside its checkpoints, not deleted
    abandoned = read_metrics(checkpoints / "abandoned", "train")
    assert abandoned and min(r["step"] for r in abandoned) > 10
    assert max(r["step"] for r in read_metrics(run_copy, "train")) == 12
