"""Load whichever model a ``save_pretrained`` directory holds (HAT or its BPE twin)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hat.bpe import BPEForCausalLM
from hat.config import load_config
from hat.hub import resolve_model_dir
from hat.model import HATForCausalLM
from hat.modeling import CONFIG_FILE, PreTrainedLM


def load_pretrained(
    directory: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **hub_kwargs: Any,
) -> PreTrainedLM:
    """``HATForCausalLM`` or ``BPEForCausalLM``, as the directory's ``config.json`` says, in
    eval mode. ``directory`` may be a Hub id, ``org/name[@revision]`` (``hub_kwargs``:
    ``revision``, ``cache_dir``, ``token``, ``local_files_only``; see ``hat.hub``). Errors name
    the file that is missing or wrong."""
    path = resolve_model_dir(directory, **hub_kwargs)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path / CONFIG_FILE} not found: is {path} a saved hat model?")
    config = load_config(path / CONFIG_FILE)
    cls = HATForCausalLM if config.model_type == "hat" else BPEForCausalLM
    model = cls.from_pretrained(path, device=device, dtype=dtype).eval()
    model.name_or_path = str(directory)
    return model
