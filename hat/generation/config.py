"""``GenerationConfig``: decoding settings (``generation_config.json``); ``GenerateOutput``."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hat.generation.lean import COMPILE_MODES

GENERATION_CONFIG_FILE = "generation_config.json"


@dataclass
class GenerationConfig:
    """Decoding settings; ``save_pretrained`` stores them as ``generation_config.json``.

    Units are the model's: bytes for HAT, tokens for the twin. ``eos_token_id=None`` means the
    model's end of document (EOD for HAT; BOS and EOS for the twin); the document-start id always
    ends a row, whatever else is listed. ``top_k=None`` / ``top_p=1.0`` / ``repetition_penalty=
    1.0`` are off (unlike ``transformers``, top_k is off by default: 256 bytes is a small vocab);
    ``top_k=0`` is off too (transformers' meaning; stored as None). Greedy decoding ignores
    ``temperature`` (it need only be > 0 with ``do_sample=True``), as transformers does.
    """

    max_new_tokens: int | None = 128  # None: max_length decides
    max_length: int | None = None  # prompt + new ids (the prompt tensor's width, as transformers)
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
    # the cached step as static-shape torch.compile'd graphs: True (CUDA graphs on a GPU, i.e.
    # mode "reduce-overhead"; "default" elsewhere) or a torch.compile mode (hat.generation.lean)
    compile_step: bool | str = False
    # HAT, cached: a row that finishes a word waits until this many rows wait, then one backbone
    # pass serves them all (1: the backbone runs for each row at once; "auto": 3/4 of a batch
    # of >= 8 rows for the paper-sized presets, else 1)
    backbone_wait: int | str = "auto"
    pad_token_id: int | None = None  # fills finished rows of the output; None: the model's PAD

    def __post_init__(self) -> None:
        # transformers' "no top-k" (its generate adds no top-k warper for 0); ours is None
        if _is_int(self.top_k) and self.top_k == 0:
            self.top_k = None

    def update(self, **kwargs: Any) -> GenerationConfig:
        """A copy with ``kwargs`` replaced; unknown names are an error. As in transformers,
        ``max_length`` given without ``max_new_tokens`` is the limit (``max_new_tokens`` wins
        when both are given). transformers options that cannot apply here are an error that
        says why unless they have their "off" value (``num_beams=1``)."""
        known = {f.name for f in dataclasses.fields(self)}
        kwargs = _drop_transformers_only(kwargs)
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(
                f"generate() got unknown arguments {unknown}; generation options: {sorted(known)}"
            )
        if kwargs.get("max_length") is not None and "max_new_tokens" not in kwargs:
            kwargs["max_new_tokens"] = None
        return dataclasses.replace(self, **kwargs)

    @classmethod
    def from_transformers(
        cls, config: Any, base: GenerationConfig | None = None
    ) -> tuple[GenerationConfig, dict[str, bool]]:
        """A ``transformers.GenerationConfig`` as ours: the options it sets (its non-default
        values) applied over ``base`` (the model's), as transformers merges a passed config
        with the model's. Returns the config and the call flags it sets
        (``return_dict_in_generate``, ``output_scores``, ``output_logits``)."""
        values = {k: v for k, v in config.to_diff_dict().items() if v is not None}
        flags = {k: bool(values.pop(k)) for k in CALL_FLAGS if k in values}
        return (base or cls()).update(**values), flags

    def validate(self) -> GenerationConfig:
        """Raise ValueError naming the first setting that is out of range or of the wrong type."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        for name in ("max_new_tokens", "max_length", "max_new_words", "min_new_tokens", "top_k"):
            value = getattr(self, name)
            need(value is None or _is_int(value), f"{name} must be a whole number, got {value!r}")
        need(_is_int(self.num_return_sequences), "num_return_sequences must be a whole number")
        need(
            isinstance(self.compile_step, bool) or self.compile_step in COMPILE_MODES,
            f"compile_step must be True, False or one of torch.compile's modes {COMPILE_MODES}, "
            f"got {self.compile_step!r}",
        )
        need(
            self.backbone_wait == "auto"
            or (_is_int(self.backbone_wait) and self.backbone_wait >= 1),
            f"backbone_wait must be 'auto' or a whole number >= 1, got {self.backbone_wait!r}",
        )

        for name in ("temperature", "top_p", "repetition_penalty"):
            value = getattr(self, name)
            need(_is_real(value), f"{name} must be a finite number, got {value!r}")
        need(
            self.max_new_tokens is not None or self.max_length is not None,
            "set max_new_tokens (or max_length)",
        )
        need(
            self.max_new_tokens is None or self.max_new_tokens >= 0,
            f"max_new_tokens must be >= 0, got {self.max_new_tokens}",
        )
        need(
            self.max_length is None or self.max_length >= 1,
            f"max_length must be >= 1, got {self.max_length}",
        )
        need(
            self.max_new_words is None or self.max_new_words >= 0,
            f"max_new_words must be >= 0 or None, got {self.max_new_words}",
        )
        need(self.min_new_tokens >= 0, f"min_new_tokens must be >= 0, got {self.min_new_tokens}")
        # only sampling divides by it (transformers' greedy decoding ignores it, too)
        need(
            not self.do_sample or self.temperature > 0,
            f"temperature must be > 0 to sample, got {self.temperature} (do_sample=False: greedy)",
        )
        need(self.top_k is None or self.top_k >= 1, f"top_k must be >= 1, got {self.top_k}")
        # 0 keeps the most likely id only (transformers accepts it too)
        need(0 <= self.top_p <= 1, f"top_p must be in [0, 1], got {self.top_p}")
        need(self.repetition_penalty > 0, "repetition_penalty must be > 0")
        need(self.num_return_sequences >= 1, "num_return_sequences must be >= 1")
        stops = self.stop_strings
        stops = [stops] if isinstance(stops, str) else stops or []
        need(
            isinstance(stops, list | tuple) and all(isinstance(s, str) for s in stops),
            f"stop_strings must be a string or a list of strings, got {self.stop_strings!r}",
        )
        # every text ends with "": a row would stop after its first id
        need(all(stops), f"stop_strings must not be empty strings, got {self.stop_strings!r}")
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


# generate() arguments that a transformers.GenerationConfig may carry
CALL_FLAGS = ("return_dict_in_generate", "output_scores", "output_logits")
# transformers options that change nothing here (bookkeeping, or beam-search-only settings)
IGNORED_TRANSFORMERS_OPTIONS = {
    "bos_token_id",
    "decoder_start_token_id",
    "transformers_version",
    "_from_model_config",
    "length_penalty",
    "early_stopping",
    "cache_implementation",
    "cache_config",
    "compile_config",
    "disable_compile",
}
# transformers options with no equivalent here: (the value that means "off", what it is)
UNSUPPORTED_TRANSFORMERS_OPTIONS = {
    "num_beams": (1, "beam search"),
    "num_beam_groups": (1, "group beam search"),
    "diversity_penalty": (0.0, "group beam search"),
    "penalty_alpha": (None, "contrastive search"),
    "dola_layers": (None, "DoLa decoding"),
    "assistant_model": (None, "assisted decoding"),
    "prompt_lookup_num_tokens": (None, "prompt lookup decoding"),
    "typical_p": (1.0, "typical sampling"),
    "min_p": (None, "min-p sampling"),
    "top_h": (None, "top-h sampling"),
    "epsilon_cutoff": (0.0, "epsilon sampling"),
    "eta_cutoff": (0.0, "eta sampling"),
    "guidance_scale": (1.0, "classifier-free guidance"),
    "no_repeat_ngram_size": (0, "n-gram blocking (pass a LogitsProcessor)"),
    "bad_words_ids": (None, "bad words (use suppress_tokens for single ids)"),
    "force_words_ids": (None, "constrained beam search"),
    "constraints": (None, "constrained beam search"),
    "sequence_bias": (None, "sequence bias (pass a LogitsProcessor)"),
    "forced_bos_token_id": (None, "a forced first id (the prompt starts the document)"),
    "forced_eos_token_id": (None, "a forced last id"),
    "begin_suppress_tokens": (None, "begin_suppress_tokens (use min_new_tokens / suppress_tokens)"),
    "exponential_decay_length_penalty": (None, "a length penalty"),
    "encoder_repetition_penalty": (1.0, "encoder-decoder models"),
    "encoder_no_repeat_ngram_size": (0, "encoder-decoder models"),
    "min_length": (0, "min_length counts the prompt: use min_new_tokens"),
    "max_time": (None, "a time limit"),
    "stopping_criteria": (None, "custom stopping criteria (use stop_strings or eos_token_id)"),
    "output_attentions": (False, "attention outputs"),
    "output_hidden_states": (False, "hidden-state outputs"),
    "renormalize_logits": (False, "renormalised scores"),
    "remove_invalid_values": (False, "NaN/inf removal"),
    "watermarking_config": (None, "watermarking"),
    "token_healing": (False, "token healing"),
    "low_memory": (None, "sequential beam search"),
}


def _drop_transformers_only(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` without the transformers options that are off or meaningless here; a clear
    error for one that is on."""
    kept = {}
    for name, value in kwargs.items():
        if name in IGNORED_TRANSFORMERS_OPTIONS:
            continue
        if name in UNSUPPORTED_TRANSFORMERS_OPTIONS:
            off, what = UNSUPPORTED_TRANSFORMERS_OPTIONS[name]
            if value is None or value is False or value == off:
                continue
            raise ValueError(
                f"{name}={value!r}: {what} is not supported by hat's generate(), which decodes "
                "one id per step, greedily or by sampling, keeping the text valid UTF-8"
            )
        kept[name] = value
    return kept


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
