"""Training checkpoints: accelerate states written atomically, verified before use.

A checkpoint is ``<root>/step_NNNNNNNN/``: accelerate's ``save_state`` (model, optimizer,
scheduler, RNG of every process), ``trainer_state.json`` (step, data position, config) and
``manifest.json`` (size and SHA-256 of every file). It is written into a hidden temporary
directory and renamed when complete, so a kill mid-save never leaves one that looks valid; a
damaged one is an error that names the file and the intact previous checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from hat.errors import HatError
from hat.manifest import (
    CHECKPOINT_PREFIX,
    DamagedFileError,
    checkpoint_step,
    verify_manifest,
    write_json,
    write_manifest,
)
from hat.training.config import TrainerConfig

logger = logging.getLogger(__name__)

TRAINER_STATE_FILE = "trainer_state.json"


class CheckpointError(HatError):
    """A checkpoint cannot be used; the message names the file and what to do."""


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first. In-progress saves live in ``.tmp`` dirs and never match."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def verify_checkpoint(directory: Path, earlier: list[Path] | None = None) -> None:
    """Raise CheckpointError naming the first missing, truncated or corrupt file, and the way
    out: the newest of ``earlier`` checkpoints that is intact (checked here), or starting over."""
    try:
        verify_manifest(directory)
    except DamagedFileError as err:
        intact = next((p for p in reversed(earlier or []) if _intact(p)), None)
        if intact is not None:
            hint = (
                f"The earlier checkpoint {intact} is intact: resume from it with "
                f"trainer.resume={intact}, or delete {directory}."
            )
        elif earlier:
            hint = (
                f"No earlier checkpoint is intact either: delete {directory.parent} to start over."
            )
        else:
            hint = f"Delete {directory} to start over."
        raise CheckpointError(f"checkpoint file {err}. {hint}") from None


def _intact(directory: Path) -> bool:
    try:
        return verify_manifest(directory)
    except DamagedFileError:
        return False


def save_checkpoint(
    accelerator: Accelerator,
    root: Path,
    step: int,
    state: dict[str, Any],
    keep_last: int,
    save_config: Callable[[Path], Any] | None = None,
) -> Path:
    """accelerate's save_state into a temp dir, then trainer state, ``save_config`` (the
    model's ``config.json`` and extras, so the checkpoint loads like an exported model),
    manifest, and an atomic rename.

    A kill at any point leaves either the previous checkpoints only, or a complete new one.
    """
    final = root / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = root / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # model, optimizer, scheduler, RNG states (all ranks)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / TRAINER_STATE_FILE, state)
        if save_config is not None:
            save_config(tmp)
        write_manifest(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(root)[:-keep_last] if keep_last else []:
            if old != final:  # never the one just written
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def find_resume_checkpoint(cfg: TrainerConfig, root: Path, accelerator: Accelerator) -> Path | None:
    """The checkpoint to resume from (verified on rank 0), or None to start fresh."""
    checkpoints = list_checkpoints(root)
    if cfg.resume == "none":
        if checkpoints:
            raise CheckpointError(
                f"trainer.output_dir={cfg.output_dir} already holds checkpoints (newest: {checkpoints[-1].name}); "
                "continue it with trainer.resume=auto, or choose another trainer.output_dir"
            )
        return None
    if cfg.resume == "auto":
        if not checkpoints:
            return None
        path, earlier = checkpoints[-1], checkpoints[:-1]
    else:
        path, earlier = Path(cfg.resume), []
    error = [None]
    if accelerator.is_main_process:
        try:
            verify_checkpoint(path, earlier)
        except Exception as err:  # noqa: BLE001 - any failure must reach the other ranks
            error = [str(err) if isinstance(err, CheckpointError) else f"{path}: {err!r}"]
    broadcast_object_list(error)  # every rank stops with the same message
    if error[0] is not None:
        raise CheckpointError(error[0])
    return path


ABANDONED = "abandoned"  # <root>/abandoned/: checkpoints of a run's rolled-back future


def set_aside_later(root: Path, step: int, accelerator: Accelerator) -> None:
    """After a rollback to ``step``: move ``root``'s later checkpoints into ``root/abandoned/``,
    kept, but no longer what ``resume=auto`` continues or what the rotation counts (it keeps
    the newest steps, so it would delete the rolled-back run's new checkpoints first)."""
    if accelerator.is_main_process:
        later = [p for p in list_checkpoints(root) if checkpoint_step(p) > step]
        for path in later:
            aside = root / ABANDONED / path.name
            n = 1
            while aside.exists():  # rolled back over the same steps before
                aside, n = root / ABANDONED / f"{path.name}.{n}", n + 1
            aside.parent.mkdir(exist_ok=True)
            os.replace(path, aside)
        if later:
            logger.warning(
                "resuming from step %d: moved the later checkpoints (%s) to %s",
                step,
                ", ".join(p.name for p in later),
                root / ABANDONED,
            )
    accelerator.wait_for_everyone()


def read_trainer_state(path: Path) -> dict[str, Any]:
    """The trainer state a checkpoint was written with (step, data position, config)."""
    try:
        return json.loads((path / TRAINER_STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path / TRAINER_STATE_FILE}: {err}") from None


def load_checkpoint(accelerator: Accelerator, path: Path) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG states; return the trainer state."""
    state = read_trainer_state(path)
    try:
        # weights from safetensors; optimizer, scheduler and RNG states through torch.load with
        # weights_only=True (accelerate's default, made explicit): loading never runs pickled code
        accelerator.load_state(str(path), load_kwargs={"weights_only": True})
    except Exception as err:
        raise CheckpointError(f"cannot load checkpoint {path}: {err}") from err
    if state["world_size"] != accelerator.num_processes:
        logger.warning(
            f"{path} was written by {state['world_size']} processes, resuming on {accelerator.num_processes}; "
            "the data order is unchanged (global batches do not depend on the world size)"
        )
    return state
