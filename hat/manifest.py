"""Checksums of the files of a saved directory (an exported model, a training checkpoint), so
that a truncated or corrupted file is caught by name when it is loaded, not trained or sampled
on. ``manifest.json`` lists each file's size and SHA-256."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
_CHUNK = 1 << 20
CHECKPOINT_PREFIX = "step_"  # <run>/checkpoints/step_NNNNNNNN, <run>/exports/step_NNNNNNNN


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step of a ``step_NNNNNNNN`` directory (a checkpoint or an export), else None."""
    name = Path(path).name
    digits = name[len(CHECKPOINT_PREFIX) :]
    return int(digits) if name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() else None


class DamagedFileError(ValueError):
    """A file of a saved directory is missing, truncated or corrupt; ``path`` names it."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path} {problem}")
        self.path, self.problem = path, problem


def sha256(path: Path) -> str:
    """The file's SHA-256, read in chunks (``hashlib.file_digest`` needs Python 3.11)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path, names: list[str] | None = None) -> None:
    """Record the size and checksum of the named files (default: every file under
    ``directory``); call it last, once they are complete."""
    if names is None:
        files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    else:
        files = [directory / name for name in names]
    manifest = {
        str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
        for p in files
    }
    write_json(directory / MANIFEST_FILE, manifest)


def verify_manifest(directory: Path, required: bool = True) -> bool:
    """Check every file the manifest lists; raise ``DamagedFileError`` naming the first that is
    missing, truncated or corrupt. Without a manifest: an error if ``required``, else False
    (directories written before manifests existed)."""
    path = directory / MANIFEST_FILE
    if not path.is_file() and not required:
        return False
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DamagedFileError(path, f"is missing or unreadable ({err})") from None
    for name, expected in manifest.items():
        file = directory / name
        if not file.is_file():
            raise DamagedFileError(file, "is missing")
        size = file.stat().st_size
        if size != expected["bytes"]:
            raise DamagedFileError(
                file, f"is truncated or damaged ({size} bytes, expected {expected['bytes']})"
            )
        if sha256(file) != expected["sha256"]:
            raise DamagedFileError(file, "is corrupt (checksum mismatch)")
    return True


def write_json(path: Path, data: Any) -> None:
    """Write JSON and fsync it, so a crash right after leaves the whole file or none."""
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
