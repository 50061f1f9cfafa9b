"""``GenerationConfig``: decoding settings (``generation_config.json``); ``GenerateOutput``."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

GENERATION_CONFIG_FILE = "generation_config.json"


@dataclass
class GenerationConfig:
    """Decoding settings; ``save_pretrained`` stores them as ``generation_config.json``.

    Units are the model's: bytes for HAT, tokens for the twin. ``eos_token_id=None`` means the
    model's end of document (EOD for HAT; BOS and EOS for the twin); the document-start id always
    ends a row, whatever else is listed. ``top_k=None`` / ``top_p=1.0`` / ``repetition_penalty=
    1.0`` are off (unlike ``transformers``, top_k is off by default: 256 bytes is a small vocab).
    """

    max_new_tokens: int = 128
    max_new_words: int | None = None  # HAT only: stop before the (n+1)-th new word
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    eos_token_id: int | list[int] | None = None
    suppress_tokens: list[int] | None = None
    stop_strings: str | list[str] | None = None
    num_return_sequences: int = 1
    use_cache: bool = True
    compile_step: bool = False  # torch.compile the cached step (for GPUs; compiles on first use)

    def update(self, **kwargs: Any) -> GenerationConfig:
        """A copy with ``kwargs`` replaced; unknown names are an error."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(
                f"generate() got unknown arguments {unknown}; generation options: {sorted(known)}"
            )
        return dataclasses.replace(self, **kwargs)

    def validate(self) -> GenerationConfig:
        """Raise ValueError naming the first setting that is out of range or of the wrong type."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        for name in ("max_new_tokens", "max_new_words", "min_new_tokens", "top_k"):
            value = getattr(self, name)
            need(value is None or _is_int(value), f"{name} must be a whole number, got {value!r}")
        need(_is_int(self.num_return_sequences), "num_return_sequences must be a whole number")
        for name in ("temperature", "top_p", "repetition_penalty"):
            value = getattr(self, name)
            need(_is_real(value), f"{name} must be a finite number, got {value!r}")
        need(self.max_new_tokens >= 0, f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        need(
            self.max_new_words is None or self.max_new_words >= 0,
            f"max_new_words must be >= 0 or None, got {self.max_new_words}",
        )
        need(self.min_new_tokens >= 0, f"min_new_tokens must be >= 0, got {self.min_new_tokens}")
        need(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        need(self.top_k is None or self.top_k >= 1, f"top_k must be >= 1, got {self.top_k}")
        need(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        need(self.repetition_penalty > 0, "repetition_penalty must be > 0")
        need(self.num_return_sequences >= 1, "num_return_sequences must be >= 1")
        need(
            self.do_sample or self.num_return_sequences == 1,
            "num_return_sequences > 1 needs do_sample=True (greedy rows would be identical)",
        )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationConfig:
        return cls().update(**data)

    def save_pretrained(self, directory: str | Path) -> Path:
        path = Path(directory) / GENERATION_CONFIG_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> GenerationConfig:
        path = Path(directory) / GENERATION_CONFIG_FILE
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"{path}: {err}") from None


@dataclass
class GenerateOutput:
    """``return_dict_in_generate=True``: sequences as usual, plus per-step [B, V] tensors."""

    sequences: torch.Tensor | list
    scores: tuple[torch.Tensor, ...] | None = None  # processed (what was sampled from)
    logits: tuple[torch.Tensor, ...] | None = None  # raw model output


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
