"""Load whichever model a ``save_pretrained`` directory holds (HAT or its BPE twin)."""

from __future__ import annotations

from pathlib import Path

import torch

from hat.bpe import BPEForCausalLM
from hat.config import load_config
from hat.model import HATForCausalLM
from hat.modeling import CONFIG_FILE, PreTrainedLM


def load_pretrained(
    directory: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> PreTrainedLM:
    """``HATForCausalLM`` or ``BPEForCausalLM``, as the directory's ``config.json`` says, in
    eval mode. Errors name the file that is missing or wrong."""
    path = Path(directory)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path / CONFIG_FILE} not found: is {path} a saved hat model?")
    config = load_config(path / CONFIG_FILE)
    cls = HATForCausalLM if config.model_type == "hat" else BPEForCausalLM
    return cls.from_pretrained(path, device=device, dtype=dtype).eval()
