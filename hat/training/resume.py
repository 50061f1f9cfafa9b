"""Continuing a run directory safely: one live run per directory (``RunLock``), and a resumed
run's settings compared with those its checkpoint was written under (``compare_settings``).

On resume, settings fall in three groups:

* what makes it the same run (architecture, kind, tokenizer, data, row size and count, seed,
  ``init_from``): a change is an error naming the keys, with the ways out;
* optimizer and schedule settings (``optim.*``, ``schedule.*``, ``trainer.steps``): a change is
  applied to the restored optimizer and scheduler, and logged key by key;
* everything else (intervals, logging, precision, ``grad_accum``, ...): just changes.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import torch

from hat.errors import HatError
from hat.training.config import ScheduleConfig

logger = logging.getLogger(__name__)

SAME_RUN = (
    "model",
    "init_from",
    "tokenizer",
    "data",
    "trainer.row_bytes",
    "trainer.global_rows",
    "trainer.seed",
)
APPLIED = ("optim", "schedule", "trainer.steps")
FREE = ("data.num_workers",)  # inside SAME_RUN, but does not change the batches
LOCK_FILE = ".lock"


class ResumeError(HatError):
    """The run directory holds another run, or a live run is using it."""


def flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}`` (lists of mappings indexed: ``a.0.b``)."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
            flat.update(flatten(dict(enumerate(value)), f"{name}."))
        else:
            flat[name] = value
    return flat


def _in(key: str, groups: tuple[str, ...]) -> bool:
    return any(key == g or key.startswith(g + ".") for g in groups)


def _most_telling_first(key: str) -> tuple[bool, int, str]:
    """Kinds and names (``model.model_type``) first, then the broadest keys: one line that
    says "another model" beats twenty nested settings that differ because of it."""
    return key.rsplit(".", 1)[-1] not in ("model_type", "name"), key.count("."), key


def compare_settings(
    saved: dict[str, Any], now: dict[str, Any], checkpoint: Path
) -> list[tuple[str, Any, Any]]:
    """The optimizer/schedule settings that changed, as ``(key, saved, now)``; raise
    ``ResumeError`` if any setting that makes the run what it is changed."""
    old, new = flatten(saved), flatten(now)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    conflicts = sorted(
        (k for k in changed if _in(k, SAME_RUN) and not _in(k, FREE)), key=_most_telling_first
    )
    if conflicts:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in conflicts[:6])
        more = f" (and {len(conflicts) - 6} more)" if len(conflicts) > 6 else ""
        raise ResumeError(
            f"{checkpoint} was written by a different run ({shown}{more}). Train it in a new "
            f"directory (trainer.output_dir=...), restore those settings to continue it, or "
            f"delete {checkpoint.parent} to start over in this directory (trainer.resume=none "
            f"refuses a directory that holds checkpoints)"
        )
    return [(k, old.get(k), new.get(k)) for k in changed if _in(k, APPLIED)]


def apply_optimizer_settings(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    lr: float,
    betas: list[float],
    eps: float,
    weight_decay: float,
    step: int,
    multiplier: float,
) -> None:
    """Give a restored optimizer and scheduler the current settings (restoring them brought
    back the ones they were saved with): peak ``lr`` for the schedule, and the lr of ``step``
    = ``lr * multiplier``. Group 0 is the weight-decayed one (``build_optimizer``)."""
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    for i, group in enumerate(optimizer.param_groups):
        group.update(initial_lr=lr, lr=lr * multiplier, betas=tuple(betas), eps=eps)
        group["weight_decay"] = weight_decay if i == 0 else 0.0
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]  # what get_last_lr reports
    assert scheduler.last_epoch == step, (scheduler.last_epoch, step)


def log_changes(changes: list[tuple[str, Any, Any]], schedule: ScheduleConfig) -> None:
    for key, old, new in changes:
        logger.info(f"resume: {key} changed from {old!r} to {new!r}; applied")
    if changes:
        logger.info(f"resume: the schedule ({schedule.name}) continues with the new settings")


class RunLock:
    """An exclusive lock on a run directory, held by the training process while it runs.

    ``fcntl.flock`` on ``<dir>/.lock``: the operating system releases it when the process ends,
    however it ends, so a lock left by a killed run is simply taken over. The file holds the
    holder's host and pid for the error message. (No locking where ``fcntl`` is missing.)
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self._file = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no flock
            return
        self._file = open(self.path, "a+")  # noqa: SIM115 - held open while the run lives
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            self._file = None
            raise ResumeError(
                f"{self.path.parent} is in use by a running training ({holder}); wait for it, "
                "stop it, or choose another trainer.output_dir"
            ) from None
        self._file.seek(0)
        left = self._file.read().strip()
        if left:  # a released lock is deleted: this one was left by a run that was killed
            logger.warning(f"{self.path}: taking over the lock left by a stopped run ({left})")
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"host {socket.gethostname()} pid {os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            self.path.unlink(missing_ok=True)
            self._file.close()  # closing releases the flock
            self._file = None
