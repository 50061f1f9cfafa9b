"""Typed model configurations and named presets.

Hydra fills these dataclasses from YAML (``configs/model/*.yaml``); Python users call
``HATConfig.from_name("small")``. ``validate()`` runs on construction of every model so a
bad value fails early with a message that says what to change.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TransformerConfig:
    """One stack of identical blocks (encoder, backbone or decoder all use this)."""

    dim: int = 256
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None  # grouped-query attention; None = n_heads
    ffn_dim: int | None = None  # SwiGLU hidden size; None = 8/3 * dim rounded up to 64
    window: int | None = None  # sliding attention window (keys within `window` back); None = full
    qk_norm: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hidden_dim(self) -> int:
        if self.ffn_dim is not None:
            return self.ffn_dim
        return 64 * ((8 * self.dim // 3 + 63) // 64)

    def validate(self, where: str) -> None:
        if self.dim % self.n_heads:
            raise ValueError(
                f"{where}.dim={self.dim} must be divisible by {where}.n_heads={self.n_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"{where}: head dim {self.head_dim} must be even for RoPE")
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"{where}.n_heads={self.n_heads} must be a multiple of {where}.n_kv_heads={self.kv_heads}"
            )
        if self.window is not None and self.window < 1:
            raise ValueError(f"{where}.window must be >= 1 or null, got {self.window}")
        if self.n_layers < 1:
            raise ValueError(f"{where}.n_layers must be >= 1, got {self.n_layers}")


ATTN_IMPLS = ("auto", "sdpa", "flex")
POOL_IMPLS = ("auto", "reference", "triton")
SPLITTERS = ("hat", "whitespace")


@dataclass
class HATConfig:
    """Hierarchical autoregressive transformer: byte encoder -> word backbone -> byte decoder.

    The decoder runs on the encoder's byte activations, so it has the encoder's width.
    """

    name: str = "custom"
    encoder: TransformerConfig = field(default_factory=lambda: TransformerConfig(window=768))
    backbone: TransformerConfig = field(default_factory=TransformerConfig)
    decoder: TransformerConfig = field(default_factory=lambda: TransformerConfig(window=768))
    splitter: str = "hat"  # "hat" (TFree-HAT's hat-splitter) or "whitespace" (the paper's runs)
    max_word_bytes: int = 100
    max_seq_bytes: int = 16384  # longest document (in bytes) score()/generate() accept
    pool_qk_norm: bool = True
    decoder_guide: str = (
        "first"  # add the previous word's vector before the "first" or "every" layer
    )
    logit_softcap: float | None = None
    attn_impl: str = "auto"  # auto: flex attention on CUDA, SDPA with a dense mask on CPU
    pool_impl: str = "auto"  # auto: Triton kernel on CUDA, PyTorch reference on CPU
    init_std: float = 0.02

    model_type: str = "hat"

    def __post_init__(self) -> None:
        for part in ("encoder", "backbone", "decoder"):
            value = getattr(self, part)
            if isinstance(value, dict):
                setattr(self, part, TransformerConfig(**value))

    def validate(self) -> HATConfig:
        for part in ("encoder", "backbone", "decoder"):
            getattr(self, part).validate(part)
        if self.decoder.dim != self.encoder.dim:
            raise ValueError(
                f"decoder.dim={self.decoder.dim} must equal encoder.dim={self.encoder.dim}: "
                "the decoder runs on the encoder's byte activations"
            )
        _check_choice("splitter", self.splitter, SPLITTERS)
        _check_choice("decoder_guide", self.decoder_guide, ("first", "every"))
        _check_choice("attn_impl", self.attn_impl, ATTN_IMPLS)
        _check_choice("pool_impl", self.pool_impl, POOL_IMPLS)
        if not 1 <= self.max_word_bytes <= 65536:
            raise ValueError(f"max_word_bytes must be in [1, 65536], got {self.max_word_bytes}")
        return self

    @classmethod
    def from_name(cls, name: str) -> HATConfig:
        from hat.presets import HAT_PRESETS

        if name not in HAT_PRESETS:
            raise ValueError(f"unknown HAT preset {name!r}; choose one of {sorted(HAT_PRESETS)}")
        return HAT_PRESETS[name]()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HATConfig:
        return _from_dict(cls, data)


@dataclass
class BPEConfig:
    """The BPE twin: sentencepiece tokens -> embedding -> the same backbone -> token head."""

    name: str = "custom"
    backbone: TransformerConfig = field(default_factory=TransformerConfig)
    vocab_size: int = 65536
    tie_embeddings: bool = False
    max_seq_tokens: int = 4096  # longest document (in tokens) score()/generate() accept
    logit_softcap: float | None = None
    attn_impl: str = "auto"
    init_std: float = 0.02

    model_type: str = "bpe"

    def __post_init__(self) -> None:
        if isinstance(self.backbone, dict):
            self.backbone = TransformerConfig(**self.backbone)

    def validate(self) -> BPEConfig:
        self.backbone.validate("backbone")
        _check_choice("attn_impl", self.attn_impl, ATTN_IMPLS)
        if self.vocab_size < 260:
            raise ValueError(f"vocab_size={self.vocab_size} too small: byte fallback needs >= 260")
        return self

    @classmethod
    def from_name(cls, name: str) -> BPEConfig:
        from hat.presets import BPE_PRESETS

        if name not in BPE_PRESETS:
            raise ValueError(f"unknown BPE preset {name!r}; choose one of {sorted(BPE_PRESETS)}")
        return BPE_PRESETS[name]()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BPEConfig:
        return _from_dict(cls, data)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not one of {choices}")


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} keys {sorted(unknown)}; valid keys: {sorted(known)}"
        )
    return cls(**data)


def load_config(path: str | Path) -> HATConfig | BPEConfig:
    """Read a ``config.json`` written by ``save_pretrained``."""
    data = json.loads(Path(path).read_text())
    model_type = data.get("model_type")
    if model_type == "hat":
        return HATConfig.from_dict(data).validate()
    if model_type == "bpe":
        return BPEConfig.from_dict(data).validate()
    raise ValueError(f"{path}: model_type must be 'hat' or 'bpe', got {model_type!r}")
