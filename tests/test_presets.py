"""Presets, parameter counts against the paper, FLOP accounting and ``hat-params``.

Big models are only ever built on the meta device, so these tests take seconds.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import hat
from hat.cli.params import main as params_main
from hat.config import BPEConfig, HATConfig, preset, preset_names
from hat.config import TransformerConfig as T
from hat.flops import (
    PAPER_BYTES_PER_TOKEN,
    PAPER_BYTES_PER_WORD,
    PAPER_SEQ_BYTES,
    count_parameters,
    mean_keys,
    mfu,
    model_flops_per_byte,
    training_flops_breakdown,
    training_flops_per_byte,
)

# The paper's reported totals (arXiv 2501.10322), and how far each reconstructed preset may be
# from them (hat/presets.py explains each difference).
PAPER_PARAMS = {
    "1b": 1.1e9,
    "3b": 4.3e9,
    "7b": 9.2e9,
    "bpe_1b": 1.1e9,
    "bpe_3b": 3.1e9,
    "bpe_7b": 7.0e9,
}
PARAM_TOLERANCE = {
    "1b": 0.08,  # +6 %: see hat_1b
    "3b": 0.03,
    "7b": 0.01,
    "bpe_1b": 0.02,
    "bpe_3b": 0.01,
    "bpe_7b": 0.01,
}
# the paper's encoder + decoder, compared with our encoder + pooling + decoder
PAPER_BYTE_STACK_PARAMS = {"1b": 23e6, "3b": 24e6, "7b": 55e6}
BYTE_STACK_TOLERANCE = 0.05
HAT_NAMES = ["tiny", "small", "1b", "3b", "7b"]
BPE_NAMES = [f"bpe_{n}" for n in HAT_NAMES]


def config_for(name: str) -> HATConfig | BPEConfig:
    return preset(name)


# ---- presets ---------------------------------------------------------------------------------


def test_tiny_is_under_two_million_and_meta_count_is_exact() -> None:
    cfg = HATConfig.from_name("tiny")
    counts = count_parameters(cfg)
    assert counts["total"] < 2_000_000
    from hat.model import HATForCausalLM

    assert HATForCausalLM(cfg).num_parameters() == counts["total"]  # meta == real build


def test_the_presets_are_registered_hat_sizes_then_twins() -> None:
    assert preset_names() == HAT_NAMES + BPE_NAMES


@pytest.mark.parametrize("name", HAT_NAMES + BPE_NAMES)
def test_every_preset_validates_and_round_trips(name: str) -> None:
    cfg = preset(name).validate()
    cls = HATConfig if name in HAT_NAMES else BPEConfig
    assert isinstance(cfg, cls) and cls.from_name(name) == cfg
    assert cls.from_dict(cfg.to_dict()) == cfg
    assert hat.load_config  # the saved form is read back through the registry (test_model.py)


@pytest.mark.parametrize(("cls", "names"), [(HATConfig, HAT_NAMES), (BPEConfig, BPE_NAMES)])
def test_bad_preset_name_lists_the_choices(cls: type, names: list[str]) -> None:
    with pytest.raises(ValueError, match="huge") as err:
        cls.from_name("huge")
    assert "choose one of" in str(err.value)
    for name in names:
        assert repr(name) in str(err.value)
    other = BPE_NAMES[0] if cls is HATConfig else HAT_NAMES[0]
    with pytest.raises(ValueError, match=f"unknown {cls.__name__} preset '{other}'"):
        cls.from_name(other)  # a preset of the other kind


def test_a_new_preset_can_be_registered() -> None:
    from hat.config import _PRESETS, register_preset

    @register_preset("test_only_wide")
    def wide() -> HATConfig:
        cfg = HATConfig.from_name("tiny")
        cfg.backbone.dim = 256
        return cfg

    try:
        assert HATConfig.from_name("test_only_wide").backbone.dim == 256
        with pytest.raises(ValueError, match="already registered"):
            register_preset("test_only_wide")(wide)
    finally:
        del _PRESETS["test_only_wide"]


def test_presets_are_fresh_objects() -> None:
    a, b = HATConfig.from_name("3b"), HATConfig.from_name("3b")
    a.encoder.n_layers = 99
    assert b.encoder.n_layers == 3 and a.decoder.n_layers == 3  # encoder/decoder not shared


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_small_twins_share_the_backbone(size: str) -> None:
    assert BPEConfig.from_name(f"bpe_{size}").backbone == HATConfig.from_name(size).backbone


@pytest.mark.parametrize(
    ("size", "byte_layers", "byte_heads", "hat_layers", "bpe_layers"),
    [("1b", 3, 6, 18, 16), ("3b", 3, 6, 28, 24), ("7b", 4, 8, 36, 32)],
)
def test_paper_shapes(
    size: str, byte_layers: int, byte_heads: int, hat_layers: int, bpe_layers: int
) -> None:
    hat, bpe = HATConfig.from_name(size), BPEConfig.from_name(f"bpe_{size}")
    for stack in (hat.encoder, hat.decoder):
        assert (stack.n_layers, stack.n_heads) == (byte_layers, byte_heads)
    assert hat.backbone.n_layers == hat_layers
    assert bpe.backbone.n_layers == bpe_layers and bpe.vocab_size == 65536
    assert bpe.name == f"bpe_{size}"


def test_bpe_7b_is_llama2_7b() -> None:
    bb = BPEConfig.from_name("bpe_7b").backbone
    assert (bb.dim, bb.n_heads, bb.kv_heads, bb.hidden_dim, bb.n_layers) == (
        4096,
        32,
        32,
        11008,
        32,
    )


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_parameter_counts_match_the_paper(name: str) -> None:
    counts = count_parameters(config_for(name))
    rel = counts["total"] / PAPER_PARAMS[name] - 1
    assert abs(rel) <= PARAM_TOLERANCE[name], (
        f"{name}: {counts['total']:.4g} vs paper {PAPER_PARAMS[name]:.4g}"
    )
    if name in PAPER_BYTE_STACK_PARAMS:
        byte_stacks = counts["encoder"] + counts["pooler"] + counts["decoder"]
        rel = byte_stacks / PAPER_BYTE_STACK_PARAMS[name] - 1
        assert abs(rel) <= BYTE_STACK_TOLERANCE, f"{name}: byte stacks {byte_stacks:.4g}"


# ---- FLOP accounting -------------------------------------------------------------------------


def test_mean_keys() -> None:
    assert mean_keys(8) == 4.5  # causal: 1..8 keys
    assert mean_keys(8, window=4) == (1 + 2 + 3 + 4 + 4 * 4) / 8
    assert mean_keys(8, window=100) == 4.5
    assert mean_keys(16384, window=768) < 768


@pytest.mark.parametrize("name", ["tiny", "3b"])
def test_flops_cover_every_linear_layer(name: str) -> None:
    """The FLOP formulas touch exactly the model's matmul weights (so matmul FLOPs = 6N)."""
    cfg = HATConfig.from_name(name)
    cfg.decoder_guide = "every"
    with torch.device("meta"):
        from hat.model import HATForCausalLM

        model = HATForCausalLM(cfg)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    enc, dec, bb = cfg.encoder, cfg.decoder, cfg.backbone
    inner = enc.n_heads * enc.head_dim
    expected = (
        enc.block_matmul_params() * enc.n_layers
        + bb.block_matmul_params() * bb.n_layers
        + dec.block_matmul_params() * dec.n_layers
        + 2 * enc.dim * inner
        + inner * bb.dim  # pooling k, v, out
        + dec.n_layers * bb.dim * dec.dim  # a guide projection per decoder layer
        + dec.dim * 256  # byte head
    )
    assert linear == expected


def test_bpe_flops_by_hand() -> None:
    """One layer, d 64, 4 heads, ffn 128, vocab 300; 16-byte rows at 2 bytes/token = 8 tokens."""
    cfg = BPEConfig(backbone=T(dim=64, n_layers=1, n_heads=4, ffn_dim=128), vocab_size=300)
    matmul_params = 4 * 64 * 64 + 3 * 64 * 128 + 64 * 300  # q k v o + SwiGLU + head = 60160
    attention = 4 * 64 * 4.5  # 2 (scores) + 2 (values) x d x mean keys (1+...+8)/8
    per_byte = (6 * matmul_params + 3 * attention) / 2
    assert per_byte == 182208
    assert training_flops_per_byte(cfg, bytes_per_unit=2, seq_len=16) == pytest.approx(per_byte)
    assert model_flops_per_byte(cfg, 2, 16) == training_flops_per_byte(cfg, 2, 16)


def test_hat_flops_by_hand() -> None:
    """Byte stacks d 32, 2 heads, ffn 64, window 4; backbone d 64, 4 heads, ffn 128;
    8-byte rows at 2 bytes/word = 4 words. Forward FLOPs per byte, then x3."""
    byte = T(dim=32, n_layers=1, n_heads=2, ffn_dim=64, window=4)
    cfg = HATConfig(
        encoder=byte,
        decoder=T(**vars(byte)),
        backbone=T(dim=64, n_layers=1, n_heads=4, ffn_dim=128),
    )
    keys = (1 + 2 + 3 + 4 + 4 * 4) / 8  # window 4 over 8 bytes
    expected = {
        "encoder": 2 * (4 * 32 * 32 + 3 * 32 * 64),
        "encoder_attention": 4 * 32 * keys,
        "pooling": 2 * 2 * 32 * 32 + 4 * 32 + 2 * 32 * 64 / 2,  # k, v per byte; out per word
        "backbone": 2 * (4 * 64 * 64 + 3 * 64 * 128) / 2,
        "backbone_attention": 4 * 64 * 2.5 / 2,  # 4 words: (1+2+3+4)/4 keys
        "guide": 2 * 64 * 32 / 2,
        "decoder": 2 * (4 * 32 * 32 + 3 * 32 * 64),
        "decoder_attention": 4 * 32 * keys,
        "byte_head": 2 * 32 * 256,
    }
    got = training_flops_breakdown(cfg, bytes_per_unit=2, seq_len=8)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(3 * value), key
    assert training_flops_per_byte(cfg, 2, 8) == pytest.approx(3 * 107776)


def test_hat_flops_grow_with_backbone() -> None:
    flops = [
        training_flops_per_byte(HATConfig.from_name(n), PAPER_BYTES_PER_WORD, PAPER_SEQ_BYTES)
        for n in ("tiny", "small", "1b", "3b", "7b")
    ]
    assert flops == sorted(flops) and len(set(flops)) == len(flops)


def test_bpe_flops_per_byte_fall_as_tokens_get_longer() -> None:
    cfg = BPEConfig.from_name("bpe_3b")
    flops = [training_flops_per_byte(cfg, bpt, PAPER_SEQ_BYTES) for bpt in (2.0, 3.0, 4.12, 6.0)]
    assert flops == sorted(flops, reverse=True) and len(set(flops)) == len(flops)


def test_flops_reject_bad_input() -> None:
    cfg = HATConfig.from_name("tiny")
    with pytest.raises(ValueError, match="bytes_per_unit"):
        training_flops_per_byte(cfg, 0)
    with pytest.raises(ValueError, match="seq_len"):
        training_flops_per_byte(cfg, 5.0, seq_len=0)


def test_mfu() -> None:
    cfg = BPEConfig.from_name("bpe_1b")
    flops = model_flops_per_byte(cfg, 4.12)
    assert mfu(cfg, 4.12, bytes_per_second=1e6, peak_flops=flops * 2e6) == pytest.approx(0.5)


@pytest.mark.parametrize("size", ["1b", "3b", "7b"])
def test_paper_presets_are_compute_matched(size: str) -> None:
    """At 5.97 bytes/word vs 4.12 bytes/token, HAT and its twin cost the same per byte (±15 %)."""
    hat = training_flops_per_byte(HATConfig.from_name(size), PAPER_BYTES_PER_WORD, PAPER_SEQ_BYTES)
    bpe = training_flops_per_byte(
        BPEConfig.from_name(f"bpe_{size}"), PAPER_BYTES_PER_TOKEN, PAPER_SEQ_BYTES
    )
    assert 0.85 < hat / bpe < 1.15


def test_byte_level_flops_are_about_the_twins_lm_head_at_3b() -> None:
    """The paper: at 3B, encoder + decoder FLOPs ≈ the BPE baseline's LM-head FLOPs.

    With our reconstruction the byte-level parts (encoder, pooling, guide, decoder, byte head;
    ~160 MFLOP/byte) come to 0.54x the twin's head (~293 MFLOP/byte at 4.12 bytes/token). The
    paper's "≈" is loose: its encoder and decoder also run on one extra [W] position per word
    (+17-33 % positions), and its byte-stack widths are not published. So: a factor of 2.5.
    """
    hat = training_flops_breakdown(HATConfig.from_name("3b"), PAPER_BYTES_PER_WORD, PAPER_SEQ_BYTES)
    bpe = training_flops_breakdown(
        BPEConfig.from_name("bpe_3b"), PAPER_BYTES_PER_TOKEN, PAPER_SEQ_BYTES
    )
    byte_level = sum(v for k, v in hat.items() if not k.startswith("backbone"))
    ratio = byte_level / bpe["head"]
    print(
        f"3B: byte-level {byte_level / 1e6:.1f} MFLOP/B, head {bpe['head'] / 1e6:.1f}, x{ratio:.2f}"
    )
    assert 1 / 2.5 < ratio < 2.5


# ---- hat-params ------------------------------------------------------------------------------


def test_hat_params_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert params_main(["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["kinds"]["hat"]) == HAT_NAMES and list(report["kinds"]["bpe"]) == BPE_NAMES
    r3 = report["kinds"]["hat"]["3b"]
    assert r3["params"] == count_parameters(HATConfig.from_name("3b"))
    assert r3["params"]["total"] == sum(v for k, v in r3["params"].items() if k != "total")
    assert r3["train_flops_per_byte"] == pytest.approx(
        training_flops_per_byte(HATConfig.from_name("3b"), PAPER_BYTES_PER_WORD, PAPER_SEQ_BYTES)
    )
    assert set(report["compute_matching"]) == {"tiny", "small", "1b", "3b", "7b"}


def test_hat_params_text_and_bad_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert params_main(["tiny", "bpe_tiny"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "bpe_tiny" in out and "GFLOP" in out
    with pytest.raises(SystemExit):
        params_main(["huge"])
    assert "unknown preset" in capsys.readouterr().err
