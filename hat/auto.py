"""Load whichever model a ``save_pretrained`` directory holds (HAT or its BPE twin)."""

from __future__ import annotations

from pathlib import Path

import torch

from hat.modeling import CONFIG_FILE, PreTrainedLM
from hat.registry import kind_of, load_config


def load_pretrained(
    directory: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> PreTrainedLM:
    """The model a ``save_pretrained`` directory holds, of the class its ``config.json``'s
    ``model_type`` names, in eval mode. Errors name the file that is missing or wrong."""
    config = load_config(Path(directory) / CONFIG_FILE)
    model_class = kind_of(config).model_class
    return model_class.from_pretrained(directory, device=device, dtype=dtype).eval()
