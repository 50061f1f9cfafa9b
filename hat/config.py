"""Typed model configurations and the table of named presets.

Hydra fills these dataclasses from YAML (the ``model`` config group); Python users call
``HATConfig.from_name("small")`` or ``hat.preset("small")``. ``validate()`` runs on
construction of every model so a bad value fails early with a message that says what to change.

Presets are registered by name (``@register_preset``; ``hat.presets`` holds the built-in ones)
so this module needs nothing from the modules that define them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar


def mean_keys(seq: float, window: int | None = None) -> float:
    """Mean number of keys a causal query attends to over a row of ``seq`` positions.

    Position ``i`` (0-based) sees ``min(i + 1, window)`` keys. ``seq`` may be fractional (a
    byte length divided by bytes per word); the continuous formula is used as is.
    """
    if seq <= 0:
        return 0.0
    if window is None or window >= seq:
        return (seq + 1) / 2
    # first `window` positions see 1..window keys, the rest see `window` each
    return (window * (window + 1) / 2 + (seq - window) * window) / seq


TRAIN_FLOPS_PER_FORWARD = 3.0  # forward + backward (twice the forward)


def _row(seq_len: float | None, default: float, bytes_per_unit: float) -> float:
    """Positions in a row of ``seq_len`` bytes (default ``default`` bytes)."""
    if bytes_per_unit <= 0:
        raise ValueError(f"bytes_per_unit must be > 0, got {bytes_per_unit}")
    seq_bytes = float(default if seq_len is None else seq_len)
    if seq_bytes <= 0:
        raise ValueError(f"seq_len must be > 0, got {seq_len}")
    return seq_bytes


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

    def block_matmul_params(self) -> int:
        """Weights of one block that multiply activations: q, k, v, o and the SwiGLU maps."""
        attn = self.dim * self.head_dim * (2 * self.n_heads + 2 * self.kv_heads)
        return attn + 3 * self.dim * self.hidden_dim

    def forward_flops(self, seq: float) -> dict[str, float]:
        """Forward FLOPs per position over a row of ``seq`` positions, ``{"matmul",
        "attention"}`` (the conventions are in ``hat.flops``)."""
        matmul = 2 * self.block_matmul_params() * self.n_layers
        keys = mean_keys(seq, self.window)
        return {"matmul": float(matmul), "attention": 4.0 * self.dim_qk * keys * self.n_layers}

    @property
    def dim_qk(self) -> int:
        return self.n_heads * self.head_dim

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
_STACKS = ("encoder", "backbone", "decoder")  # HATConfig's TransformerConfig fields
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
    attn_impl: str = "auto"  # auto: flex attention on CUDA, SDPA on CPU (AttentionMask.packed)
    pool_impl: str = "auto"  # auto: Triton kernel on CUDA, PyTorch reference on CPU
    init_std: float = 0.02

    model_type: str = "hat"

    def __post_init__(self) -> None:
        for part in _STACKS:
            value = getattr(self, part)
            if isinstance(value, dict):
                setattr(self, part, TransformerConfig(**value))

    def validate(self) -> HATConfig:
        for part in _STACKS:
            getattr(self, part).validate(part)
        _check_no_backbone_window(self.backbone)
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
        """A fresh copy of a named HAT preset (``tiny``, ``small``, ``1b``, ``3b``, ``7b``)."""
        return _preset_of(cls, name)

    def min_row_bytes(self) -> int:
        """The shortest training row that holds every word: rows are cut between words."""
        return self.max_word_bytes

    def training_flops_breakdown(
        self, bytes_per_word: float, seq_len: int | None = None
    ) -> dict[str, float]:
        """Training FLOPs per byte of text by component (conventions: ``hat.flops``).

        ``seq_len``: training row in bytes (default ``max_seq_bytes``). Keys: ``encoder``,
        ``encoder_attention`` (per byte); ``pooling`` (k/v projections and the ragged attention
        per byte, output projection per word); ``backbone``, ``backbone_attention``, ``guide``
        (the decoder's guide projection; per word); ``decoder``, ``decoder_attention``,
        ``byte_head`` (per byte).
        """
        seq_bytes = _row(seq_len, self.max_seq_bytes, bytes_per_word)
        enc, dec, bb_cfg = self.encoder, self.decoder, self.backbone
        pool = enc.dim_qk  # the pooler's width (its heads are the encoder's)
        n_guides = dec.n_layers if self.decoder_guide == "every" else 1
        e, d = enc.forward_flops(seq_bytes), dec.forward_flops(seq_bytes)
        bb = bb_cfg.forward_flops(seq_bytes / bytes_per_word)
        per_byte = {
            "encoder": e["matmul"],
            "encoder_attention": e["attention"],
            # every byte is a key of exactly one word query: k and v projections, one score
            # and one value accumulation per byte and head; the output projection once per word
            "pooling": 4.0 * enc.dim * pool + 4.0 * pool + 2.0 * pool * bb_cfg.dim / bytes_per_word,
            "backbone": bb["matmul"] / bytes_per_word,
            "backbone_attention": bb["attention"] / bytes_per_word,
            # projected once per word, then broadcast (gathered) to that word's bytes
            "guide": 2.0 * bb_cfg.dim * dec.dim * n_guides / bytes_per_word,
            "decoder": d["matmul"],
            "decoder_attention": d["attention"],
            "byte_head": 2.0 * dec.dim * 256,
        }
        return {k: TRAIN_FLOPS_PER_FORWARD * v for k, v in per_byte.items()}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HATConfig:
        """The inverse of ``to_dict``; missing or unknown keys are errors that name them."""
        return _from_dict(cls, data)


def _check_no_backbone_window(backbone: TransformerConfig) -> None:
    """The backbone attends to every earlier word or token (training, scoring and the caches
    alike); a sliding window belongs to the byte stacks."""
    if backbone.window is not None:
        raise ValueError(
            f"backbone.window={backbone.window}: the backbone has no sliding window; "
            "set backbone.window=null (windows are for encoder and decoder)"
        )


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
        _check_no_backbone_window(self.backbone)
        _check_choice("attn_impl", self.attn_impl, ATTN_IMPLS)
        if self.vocab_size < 260:
            raise ValueError(f"vocab_size={self.vocab_size} too small: byte fallback needs >= 260")
        return self

    @classmethod
    def from_name(cls, name: str) -> BPEConfig:
        """A fresh copy of a named twin preset (``bpe_tiny``, ``bpe_small``, ``bpe_1b``, ...)."""
        return _preset_of(cls, name)

    def min_row_bytes(self) -> int:
        """Token rows may be cut anywhere."""
        return 1

    def training_flops_breakdown(
        self, bytes_per_token: float, seq_len: int | None = None
    ) -> dict[str, float]:
        """Training FLOPs per byte of text by component (conventions: ``hat.flops``):
        ``backbone``, ``backbone_attention``, ``head`` (all per token; the input embedding
        is a free lookup). ``seq_len``: training row in bytes (default ``max_seq_tokens``
        tokens' worth), so a HAT and a twin run over the same rows compare directly."""
        seq_bytes = _row(seq_len, self.max_seq_tokens * bytes_per_token, bytes_per_token)
        bb = self.backbone.forward_flops(seq_bytes / bytes_per_token)
        per_token = {
            "backbone": bb["matmul"],
            "backbone_attention": bb["attention"],
            "head": 2.0 * self.backbone.dim * self.vocab_size,
        }
        return {k: TRAIN_FLOPS_PER_FORWARD * v / bytes_per_token for k, v in per_token.items()}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BPEConfig:
        """The inverse of ``to_dict``; missing or unknown keys are errors that name them."""
        return _from_dict(cls, data)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{key}={value!r} is not one of {choices}")


def _from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Every field must be given (``name`` may be left out), in the stacks too: a saved config
    missing keys is an error naming them, not defaults that build a model its weights misfit."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown, missing = sorted(set(data) - known), sorted(known - set(data) - {"name"})
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; valid keys: {sorted(known)}")
    if missing:
        raise ValueError(f"{where}: keys missing: {missing}")
    stacks = {k: _from_dict(TransformerConfig, data[k], k) for k in _STACKS if k in data}
    return cls(**{**data, **stacks})


# ---- presets -------------------------------------------------------------------------------
ModelConfig = HATConfig | BPEConfig
C = TypeVar("C", HATConfig, BPEConfig)
_PRESETS: dict[str, Callable[[], ModelConfig]] = {}


def register_preset(name: str) -> Callable[[Callable[[], C]], Callable[[], C]]:
    """Decorator: make a function returning a model config available by ``name``."""

    def register(make: Callable[[], C]) -> Callable[[], C]:
        if name in _PRESETS:
            raise ValueError(f"preset {name!r} is already registered")
        _PRESETS[name] = make
        return make

    return register


def preset_names() -> list[str]:
    """Every registered preset, in registration order (HAT sizes, then their twins)."""
    return list(_PRESETS)


def preset(name: str) -> ModelConfig:
    """A fresh copy of the named preset, HAT or twin (``tiny``, ``bpe_small``, ``7b``, ...)."""
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {preset_names()}")
    return _PRESETS[name]()


def _preset_of(cls: type[C], name: str) -> C:
    config = preset(name) if name in _PRESETS else None
    if not isinstance(config, cls):
        names = [n for n, make in _PRESETS.items() if isinstance(make(), cls)]
        raise ValueError(f"unknown {cls.__name__} preset {name!r}; choose one of {names}")
    return config
