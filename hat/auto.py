"""Load whichever model a ``save_pretrained`` directory holds (HAT or its BPE twin)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hat.hub import resolve_model_dir
from hat.modeling import CONFIG_FILE, PreTrainedLM
from hat.registry import kind_of, load_config


def load_pretrained(
    directory: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **hub_kwargs: Any,
) -> PreTrainedLM:
    """The model a ``save_pretrained`` directory (or a training checkpoint) holds, of the
    class its ``config.json``'s ``model_type`` names, in eval mode. ``directory`` may be a Hub
    id, ``org/name[@revision]`` (``hub_kwargs``: ``revision``, ``cache_dir``, ``token``,
    ``local_files_only``; see ``hat.hub``). Errors name the file that is missing or wrong."""
    path = resolve_model_dir(directory, **hub_kwargs)
    model_class = kind_of(load_config(path / CONFIG_FILE)).model_class
    model = model_class.from_pretrained(path, device=device, dtype=dtype).eval()
    model.name_or_path = str(directory)
    return model
