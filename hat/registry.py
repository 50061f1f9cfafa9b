"""The model kinds: the one place that knows HAT from its BPE twin.

Everything that differs between the kinds is either here (``ModelKind``: config class, model
class, what a row and a backbone position count, whether a tokenizer comes along) or a method
of the model (``data_format``, ``generation_spec``, ``units_per_row``, ``backbone_positions``)
or of its config (``training_flops_breakdown``, ``min_row_bytes``). The trainer, data pipeline,
evaluation and generation ask those and never branch on the kind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hat.bpe import BPEForCausalLM
from hat.config import BPEConfig, HATConfig, ModelConfig
from hat.model import HATForCausalLM
from hat.modeling import PreTrainedLM
from hat.tokenizer import BPETokenizer


@dataclass(frozen=True)
class ModelKind:
    """What is particular to one kind of model (``config.json``'s ``model_type``)."""

    name: str
    config_class: type
    model_class: type
    unit: str  # what a training row counts: "bytes" or "tokens"
    position: str  # what one backbone position reads: "word" or "token"
    uses_tokenizer: bool  # built with a trained tokenizer (saved beside the weights)

    def build(self, config: ModelConfig, tokenizer: BPETokenizer | None = None) -> PreTrainedLM:
        """A freshly initialised model (``tokenizer``: the twin's, ignored by kinds without one)."""
        if self.uses_tokenizer:
            return self.model_class(config, tokenizer)
        return self.model_class(config)


KINDS: dict[str, ModelKind] = {
    kind.name: kind
    for kind in (
        ModelKind("hat", HATConfig, HATForCausalLM, "bytes", "word", uses_tokenizer=False),
        ModelKind("bpe", BPEConfig, BPEForCausalLM, "tokens", "token", uses_tokenizer=True),
    )
}


def kind_of(thing: str | ModelConfig | PreTrainedLM) -> ModelKind:
    """The kind of a ``model_type`` name, a model config or a model."""
    name = thing if isinstance(thing, str) else getattr(thing, "model_type", None)
    if name is None:
        name = getattr(getattr(thing, "config", None), "model_type", None)
    if name not in KINDS:
        raise ValueError(f"model_type must be one of {sorted(KINDS)}, got {name!r}")
    return KINDS[name]


def config_from_dict(data: dict[str, Any], where: str = "model config") -> ModelConfig:
    """A validated model config of the kind ``data["model_type"]`` names (``config.json``, an
    untyped hydra node). Missing or unknown keys are errors that name them."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    kind = kind_of(data.get("model_type", "<missing>"))
    try:
        return kind.config_class.from_dict(data).validate()
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def load_config(path: str | Path) -> ModelConfig:
    """Read a ``config.json`` written by ``save_pretrained``; errors name the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: is {path.parent} a saved hat model?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    return config_from_dict(data, str(path))
