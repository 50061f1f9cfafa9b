"""``training.json``: what an exported model was trained on, written beside ``config.json``.

The trainer writes it with every export (``model/``, ``exports/step_N/``) so that a later run
can build on the model without the user repeating its history: ``hat-continue`` replays the
recorded data and re-warms to the recorded peak learning rate. Local paths are stored absolute
(the record is read from other working directories); ``builtin:`` corpora and hub names as given.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from hat.data import DataConfig, SourceConfig
from hat.data.sources import local_files

TRAINING_FILE = "training.json"
RECORD_FORMAT = 1


def portable_data(data: DataConfig) -> dict[str, Any]:
    """``data`` as a plain dict whose local paths are absolute (globs kept as globs)."""
    sources = []
    for i, src in enumerate(data.sources):
        entry = dataclasses.asdict(src)
        if local_files(src, f"data.sources[{i}]") is not None and not src.path.startswith(
            "builtin:"
        ):
            entry["path"] = str(Path(src.path).expanduser().absolute())
        sources.append(entry)
    return {**dataclasses.asdict(data), "sources": sources}


def data_from_record(record: dict[str, Any]) -> DataConfig:
    """The ``DataConfig`` a record (or a checkpoint's config) holds."""
    data = dict(record)
    data["sources"] = [SourceConfig(**s) for s in data.get("sources", [])]
    return DataConfig(**data)


def write_training_record(directory: Path, record: dict[str, Any]) -> Path:
    """Write ``training.json`` into an export directory."""
    path = Path(directory) / TRAINING_FILE
    path.write_text(json.dumps({"format": RECORD_FORMAT, **record}, indent=1) + "\n")
    return path


def read_training_record(directory: Path) -> dict[str, Any] | None:
    """The record of an export directory, or None where there is none (older exports, models
    saved from Python). A damaged file is an error that names it."""
    path = Path(directory) / TRAINING_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete or repair it") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return record
