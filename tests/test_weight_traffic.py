"""scripts/experiments/weight_traffic.py: the weights a cached step reads, and their floors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import hat

SCRIPT = Path(__file__).resolve().parents[1] / "scripts/experiments/weight_traffic.py"


def test_weight_traffic_counts_every_matrix_each_step_reads() -> None:
    spec = importlib.util.spec_from_file_location("weight_traffic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = module.parse_args(["--hat", "tiny", "--bpe", "bpe_tiny", "--repeats", "2"])
    report = module.measure(args)
    model = hat.HATForCausalLM.from_name("tiny")
    cfg = model.config
    byte_step = report["hat byte step (encoder, decoder)"]
    # four matrices a layer (qkv, out, gate_up, down), the decoder's guide projection and head
    assert byte_step["products"] == 4 * (cfg.encoder.n_layers + cfg.decoder.n_layers) + 2
    backbone = sum(p.numel() for p in model.backbone.parameters() if p.dim() == 2)
    pooler = sum(p.numel() for p in model.pooler.parameters() if p.dim() == 2)
    word_step = report["hat word step (pooler, backbone)"]
    assert word_step["weight_mb"] == pytest.approx((backbone + pooler) * 4 / 1e6, abs=0.01)
    floors = report["floor_us_per_byte"]
    hat_floor = byte_step["us_per_step"] + 0.2 * word_step["us_per_step"]
    assert floors["hat"] == pytest.approx(hat_floor, rel=0.01)
    twin = report["twin token step (backbone, head)"]
    assert floors["twin"] == pytest.approx(twin["us_per_step"] * 65 / 256, rel=0.01)
    ratio = report["hat_over_twin_bytes_per_s_at_the_floors"]
    assert ratio == pytest.approx(floors["twin"] / floors["hat"], rel=0.01)
