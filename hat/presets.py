"""Named model sizes. ``HATConfig.from_name`` / ``BPEConfig.from_name`` look them up here.

tiny: unit tests (< 2 M parameters). small: trains on a laptop CPU in minutes.
1b / 3b / 7b: the HAT paper's sizes (arXiv 2501.10322, Table 1) and their BPE twins.
"""

from __future__ import annotations

from collections.abc import Callable

from hat.config import BPEConfig, HATConfig, TransformerConfig as T


def hat_tiny() -> HATConfig:
    """~0.4 M parameters: every code path, fast enough for unit tests."""
    return HATConfig(
        name="tiny",
        encoder=T(dim=64, n_layers=1, n_heads=2, window=32),
        backbone=T(dim=128, n_layers=2, n_heads=4, n_kv_heads=2),
        decoder=T(dim=64, n_layers=1, n_heads=2, window=32),
        max_seq_bytes=4096,
    )


def hat_small() -> HATConfig:
    """~5 M parameters; learns English spelling and common words on a CPU in minutes."""
    return HATConfig(
        name="small",
        encoder=T(dim=192, n_layers=2, n_heads=3, window=256),
        backbone=T(dim=384, n_layers=6, n_heads=6, n_kv_heads=2),
        decoder=T(dim=192, n_layers=2, n_heads=3, window=256),
        max_seq_bytes=8192,
    )


def _paper_hat(name: str, layers: int, dim: int, heads: int, byte_heads: int, byte_layers: int) -> HATConfig:
    byte_dim = 128 * byte_heads
    byte_stack = T(dim=byte_dim, n_layers=byte_layers, n_heads=byte_heads, window=768)
    return HATConfig(
        name=name,
        encoder=byte_stack,
        backbone=T(dim=dim, n_layers=layers, n_heads=heads),
        decoder=T(**{**byte_stack.__dict__}),
        max_seq_bytes=16384,
    )


def hat_1b() -> HATConfig:
    """Paper 1B: backbone 18 layers; encoder and decoder 3 layers x 6 heads."""
    return _paper_hat("1b", layers=18, dim=2048, heads=16, byte_heads=6, byte_layers=3)


def hat_3b() -> HATConfig:
    """Paper 3B: backbone 28 layers; encoder and decoder 3 layers x 6 heads."""
    return _paper_hat("3b", layers=28, dim=3072, heads=24, byte_heads=6, byte_layers=3)


def hat_7b() -> HATConfig:
    """Paper 7B: backbone 36 layers; encoder and decoder 4 layers x 8 heads."""
    return _paper_hat("7b", layers=36, dim=4096, heads=32, byte_heads=8, byte_layers=4)


def bpe_tiny() -> BPEConfig:
    """Twin of hat_tiny: the same backbone, a small vocabulary for test tokenizers."""
    return BPEConfig(name="bpe_tiny", backbone=hat_tiny().backbone, vocab_size=512, max_seq_tokens=2048)


def bpe_small() -> BPEConfig:
    """Twin of hat_small: the same backbone, 4k vocabulary (trained by hat-tokenizer)."""
    return BPEConfig(name="bpe_small", backbone=hat_small().backbone, vocab_size=4096, max_seq_tokens=4096)


def bpe_1b() -> BPEConfig:
    """Paper 1B baseline: 16 layers, 64k vocabulary."""
    return BPEConfig(name="bpe_1b", backbone=T(dim=2048, n_layers=16, n_heads=16), vocab_size=65536)


def bpe_3b() -> BPEConfig:
    """Paper 3B baseline: 24 layers, 64k vocabulary."""
    return BPEConfig(name="bpe_3b", backbone=T(dim=3072, n_layers=24, n_heads=24), vocab_size=65536)


def bpe_7b() -> BPEConfig:
    """Paper 7B baseline: 32 layers, 64k vocabulary."""
    return BPEConfig(name="bpe_7b", backbone=T(dim=4096, n_layers=32, n_heads=32), vocab_size=65536)


HAT_PRESETS: dict[str, Callable[[], HATConfig]] = {
    "tiny": hat_tiny,
    "small": hat_small,
    "1b": hat_1b,
    "3b": hat_3b,
    "7b": hat_7b,
}
BPE_PRESETS: dict[str, Callable[[], BPEConfig]] = {
    "bpe_tiny": bpe_tiny,
    "bpe_small": bpe_small,
    "bpe_1b": bpe_1b,
    "bpe_3b": bpe_3b,
    "bpe_7b": bpe_7b,
    # short names too, so BPEConfig.from_name("tiny") works like HATConfig.from_name("tiny")
    "tiny": bpe_tiny,
    "small": bpe_small,
    "1b": bpe_1b,
    "3b": bpe_3b,
    "7b": bpe_7b,
}
